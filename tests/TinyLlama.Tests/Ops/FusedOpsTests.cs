// Checks shared by the fused-op tests (FusedRmsNormTests, FusedRopeTests, FusedAttentionTests,
// FusedSwiGluTests), and the tests that run every fused op the same way: 16-bit inputs computed in f32
// and rounded back, and gradients that reach only the inputs that ask for them.
using TinyLlama.Autograd;
using TinyLlama.Backends;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Infrastructure.GradCheck;

namespace TinyLlama.Tests.Ops;

/// <summary>Elementwise comparison with the first mismatch named in the failure message.</summary>
internal static class FusedAssert
{
    /// <summary>|actual - expected| &lt;= atol + rtol * |expected| for every element; equal infinities match.</summary>
    public static void Close(double[] expected, double[] actual, double atol, double rtol, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i], a = actual[i];
            if (double.IsInfinity(e) && e == a) continue;
            double err = Math.Abs(a - e);
            Assert.True(err <= atol + rtol * Math.Abs(e), $"{what}[{i}]: {a:G10}, expected {e:G10} (error {err:G3}, atol {atol:G2}, rtol {rtol:G2})");
        }
    }

    /// <summary>Close for two tensors of the same shape.</summary>
    public static void Close(Tensor expected, Tensor actual, double atol, double rtol, string what)
    {
        Assert.Equal(expected.Shape, actual.Shape);
        Close(expected.ToArray<double>(), actual.ToArray<double>(), atol, rtol, what);
    }

    /// <summary>Bitwise equality (for results that must be deterministic or exactly rounded).</summary>
    public static void Identical(Tensor expected, Tensor actual, string what)
    {
        Assert.Equal(expected.Shape, actual.Shape);
        Assert.Equal(expected.DType, actual.DType);
        var e = expected.ToArray<double>();
        var a = actual.ToArray<double>();
        for (int i = 0; i < e.Length; i++)
            Assert.True(e[i].Equals(a[i]), $"{what}[{i}]: {a[i]:R}, expected exactly {e[i]:R}");
    }
}

public class FusedOpsTests
{
    private static Tensor Rand(ulong seed, DType dtype, params int[] shape) => Tensor.RandN(shape, new Generator(seed), dtype);

    /// <summary>Each fused op on two inputs of one dtype, for the dtype tests below.</summary>
    public static TheoryData<string> Ops => new() { "rms_norm", "rope", "attention", "swiglu" };

    private static Tensor Apply(string op, Tensor[] x) => op switch
    {
        "rms_norm" => Functional.RmsNorm(x[0], x[1]),
        "rope" => Functional.Rope(x[0], x[1], x[2], RopeLayout.Interleaved),
        "attention" => Functional.ScaledDotProductAttention(x[0], x[1], x[2], causal: true),
        "swiglu" => Functional.SwiGlu(x[0], x[1]),
        _ => throw new ArgumentException(op),
    };

    private static Tensor[] Inputs(string op, DType dtype)
    {
        switch (op)
        {
            case "rms_norm": return [Rand(1, dtype, 3, 5, 12), Rand(2, dtype, 12)];
            case "rope":
            {
                var (c, s) = Functional.RopeTables(Functional.RopeInverseFrequencies(8), 2, 5, dtype);
                return [Rand(3, dtype, 2, 5, 3, 8), c, s];
            }
            case "attention": return [Rand(4, dtype, 1, 4, 5, 8), Rand(5, dtype, 1, 2, 7, 8), Rand(6, dtype, 1, 2, 7, 8)];
            case "swiglu": return [Rand(7, dtype, 4, 9), Rand(8, dtype, 4, 9)];
            default: throw new ArgumentException(op);
        }
    }

    [Theory]
    [MemberData(nameof(Ops))]
    public void HalfInputsComputeInF32AndRoundOnce(string op)
    {
        // bf16 and f16 -> f32 is exact, so the 16-bit op must equal the f32 op on the same values
        // rounded once to the 16-bit type: bitwise, forward and backward.
        foreach (var half in new[] { DType.BF16, DType.F16 })
        {
            var xh = Inputs(op, half).Select(t => t.RequiresGrad_()).ToArray();
            var xf = xh.Select(t => t.Detach().To(DType.F32).RequiresGrad_()).ToArray();
            var yh = Apply(op, xh);
            var yf = Apply(op, xf);
            Assert.Equal(half, yh.DType);
            FusedAssert.Identical(yf.Detach().To(half), yh.Detach(), $"{op} {half.Name()} forward");
            var u = Rand(9, DType.F32, yh.Shape);
            yh.Backward(u.To(half));
            yf.Backward(u.To(half).To(DType.F32));
            for (int i = 0; i < xh.Length; i++)
            {
                if (xh[i].Grad is null) { Assert.Null(xf[i].Grad); continue; }
                Assert.Equal(half, xh[i].Grad!.DType);
                FusedAssert.Identical(xf[i].Grad!.To(half), xh[i].Grad!, $"{op} {half.Name()} gradient of input {i}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Ops))]
    public void GradientsReachOnlyInputsThatRequireThem(string op)
    {
        // The first input alone requires grad: the backward must give it a gradient of its own shape
        // and leave the others untouched (no gradient is computed for constants such as RoPE tables).
        var x = Inputs(op, DType.F64);
        x[0].RequiresGrad_();
        var y = Apply(op, x);
        y.Backward(Rand(10, DType.F64, y.Shape));
        Assert.Equal(x[0].Shape, x[0].Grad!.Shape);
        for (int i = 1; i < x.Length; i++) Assert.Null(x[i].Grad);
    }

    [Fact]
    public void IntegerInputsAreRejectedWithTheOpName()
    {
        var ids = Tensor.Zeros([4, 9], DType.I32);
        var e = Assert.Throws<ArgumentException>(() => Functional.SwiGlu(ids, ids));
        Assert.Contains("swiglu", e.Message);
        Assert.Contains("int32", e.Message);
        var e2 = Assert.Throws<ArgumentException>(() => Functional.RmsNorm(Tensor.Zeros([2, 3]), Tensor.Zeros([3], DType.F64)));
        Assert.Contains("rms_norm", e2.Message);
        Assert.Contains("float64", e2.Message);
    }

    [Fact]
    public void FiniteDifferenceCheckerCatchesAWrongGradient()
    {
        // Guards the gradient tests themselves: a deliberately wrong backward (silu' replaced by
        // sigmoid) must be rejected by GradCheck.Check with the tolerances used in these files.
        static Tensor Wrong(Tensor[] t)
        {
            var (g, u) = (t[0].Detach(), t[1].Detach());
            return Engine.Record(Functional.SwiGlu(g, u), "WrongSwiGluBackward", [t[0], t[1]],
                dy => [dy * u * g.Sigmoid(), dy * g.Silu()]);
        }
        var e = Assert.ThrowsAny<Xunit.Sdk.XunitException>(() => Check(Wrong, [RandN(1, 3, 4), RandN(2, 3, 4)]));
        Assert.Contains("input 0", e.Message);   // the gate's gradient is the wrong one; up's is right
    }
}
