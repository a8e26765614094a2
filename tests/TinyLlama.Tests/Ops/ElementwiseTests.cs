// Elementwise ops: values against scalar math, gradients against finite differences (f64), with
// broadcast and non-contiguous (permuted, sliced) inputs.
using TinyLlama.Tensors;
using static TinyLlama.Tests.Infrastructure.GradCheck;

namespace TinyLlama.Tests.Ops;

public class ElementwiseTests
{
    public static TheoryData<string> UnaryNames => new() { "neg", "exp", "log", "sqrt", "rsqrt", "abs", "square", "sigmoid", "tanh", "relu", "silu", "gelu", "clamp", "pow" };

    private static Tensor ApplyUnary(string name, Tensor x) => name switch
    {
        "neg" => x.Neg(),
        "exp" => x.Exp(),
        "log" => x.Abs().Add(0.5).Log(),
        "sqrt" => (x.Abs() + 0.5).Sqrt(),
        "rsqrt" => (x.Abs() + 0.5).Rsqrt(),
        "abs" => x.Abs(),
        "square" => x.Square(),
        "sigmoid" => x.Sigmoid(),
        "tanh" => x.Tanh(),
        "relu" => x.Relu(),
        "silu" => x.Silu(),
        "gelu" => x.Gelu(),
        "clamp" => x.Clamp(-0.5, 0.7),
        "pow" => (x.Abs() + 0.5).Pow(2.5),
        _ => throw new ArgumentException(name),
    };

    private static double Reference(string name, double x) => name switch
    {
        "neg" => -x,
        "exp" => Math.Exp(x),
        "log" => Math.Log(Math.Abs(x) + 0.5),
        "sqrt" => Math.Sqrt(Math.Abs(x) + 0.5),
        "rsqrt" => 1 / Math.Sqrt(Math.Abs(x) + 0.5),
        "abs" => Math.Abs(x),
        "square" => x * x,
        "sigmoid" => 1 / (1 + Math.Exp(-x)),
        "tanh" => Math.Tanh(x),
        "relu" => Math.Max(x, 0),
        "silu" => x / (1 + Math.Exp(-x)),
        "gelu" => 0.5 * x * (1 + ErfRef(x / Math.Sqrt(2))),
        "clamp" => Math.Clamp(x, -0.5, 0.7),
        "pow" => Math.Pow(Math.Abs(x) + 0.5, 2.5),
        _ => throw new ArgumentException(name),
    };

    /// <summary>erf by Simpson integration of 2/sqrt(pi) exp(-t^2): slow and independent of the library's series.</summary>
    private static double ErfRef(double x)
    {
        int n = 20000;
        double h = x / n, s = 0;
        for (int i = 0; i <= n; i++)
        {
            double w = i == 0 || i == n ? 1 : i % 2 == 1 ? 4 : 2;
            s += w * Math.Exp(-(i * h) * (i * h));
        }
        return s * h / 3 * 2 / Math.Sqrt(Math.PI);
    }

    [Theory]
    [MemberData(nameof(UnaryNames))]
    public void UnaryValuesMatchScalarMath(string name)
    {
        // 1037 elements: not a multiple of any SIMD width, so vector tails run too.
        foreach (var dtype in new[] { DType.F32, DType.F64 })
        {
            var x = Tensor.RandN([1037], new Generator(3), dtype) * 2.0;
            var y = ApplyUnary(name, x).ToArray<double>();
            var xs = x.ToArray<double>();
            double tol = dtype == DType.F32 ? 2e-6 : 1e-12;
            for (int i = 0; i < xs.Length; i++)
            {
                double expected = Reference(name, xs[i]);
                Assert.True(Math.Abs(y[i] - expected) <= tol * (1 + Math.Abs(expected)), $"{name}({xs[i]}) = {y[i]}, expected {expected} ({dtype})");
            }
        }
    }

    [Theory]
    [MemberData(nameof(UnaryNames))]
    public void UnaryGradientsMatchFiniteDifferences(string name)
    {
        // Values kept away from the kinks of abs/relu/clamp so central differences are valid.
        var x = RandN(11, 3, 5);
        var xs = x.ToArray<double>().Select(v => Math.Abs(v) < 0.05 ? v + 0.2 : v).Select(v => Math.Abs(v + 0.5) < 0.05 || Math.Abs(v - 0.7) < 0.05 ? v + 0.11 : v).ToArray();
        x = Tensor.FromArray(xs, [3, 5]);
        Check(t => ApplyUnary(name, t[0].Permute(1, 0)), [x]);
    }

    [Theory]
    [InlineData("add")]
    [InlineData("sub")]
    [InlineData("mul")]
    [InlineData("div")]
    [InlineData("pow")]
    [InlineData("maximum")]
    [InlineData("minimum")]
    public void BinaryGradientsWithBroadcastAndViews(string name)
    {
        Func<Tensor, Tensor, Tensor> op = name switch
        {
            "add" => (a, b) => a + b,
            "sub" => (a, b) => a - b,
            "mul" => (a, b) => a * b,
            "div" => (a, b) => a / (b.Abs() + 0.5),
            "pow" => (a, b) => Tensor.Pow(a.Abs() + 0.5, b),
            "maximum" => Tensor.Maximum,
            "minimum" => Tensor.Minimum,
            _ => throw new ArgumentException(name),
        };
        // a: [4, 3] viewed transposed as [3, 4]; b: [1, 4] broadcast over rows; c: a strided slice.
        var a = RandN(1, 4, 3);
        var b = RandN(2, 1, 4);
        Check(t => op(t[0].Transpose(0, 1), t[1]), [a, b]);
        var c = RandN(3, 6, 4);
        Check(t => op(t[0].Slice(0, 1, 6, 2), t[1]), [c, b]);
        // scalar-shaped and rank-extending broadcasts
        var s = RandN(4);
        var d = RandN(5, 2, 3, 4);
        Check(t => op(t[0], t[1]), [d, s]);
        Check(t => op(t[1], t[0]), [d, b]);
    }

    [Fact]
    public void BroadcastShapeErrorNamesBothShapesAndTheOp()
    {
        var a = Tensor.Zeros([2, 3]);
        var b = Tensor.Zeros([4]);
        var e = Assert.Throws<ArgumentException>(() => a + b);
        Assert.Contains("[2, 3]", e.Message);
        Assert.Contains("[4]", e.Message);
        Assert.Contains("add", e.Message);
    }

    [Fact]
    public void WhereAndComparisons()
    {
        var a = Tensor.FromArray(new double[] { 1, -2, 3, -4 }, [2, 2]);
        var b = Tensor.FromArray(new double[] { 10, 20, 30, 40 }, [2, 2]);
        var y = Tensor.Where(a.Gt(0), a, b);
        Assert.Equal(new double[] { 1, 20, 3, 40 }, y.ToArray<double>());
        Assert.Equal(new double[] { 0, 1, 0, 1 }, a.Lt(0).ToArray<double>());
        Assert.Equal(new double[] { 1, 0, 0, 0 }, a.Eq(1).ToArray<double>());
        var cond = Tensor.FromArray(new double[] { 1, 0, 0, 1 }, [2, 2]);
        Check(t => Tensor.Where(cond, t[0], t[1]), [RandN(4, 2, 2), RandN(5, 1, 2)]);
    }

    [Fact]
    public void HalfTypesComputeInF32AndRoundBack()
    {
        var x = Tensor.FromArray(new float[] { 1.5f, -2.25f, 3.125f }).To(DType.BF16);
        var y = (x * 2.0).ToArray<float>();
        Assert.Equal(new float[] { 3f, -4.5f, 6.25f }, y);
        var h = Tensor.FromArray(new float[] { 0.1f, 0.2f }).To(DType.F16);
        Assert.Equal(DType.F16, (h + h).DType);
        Assert.Equal((float)(Half)0.2f, (h + h).ToArray<float>()[0], 3);
    }
}
