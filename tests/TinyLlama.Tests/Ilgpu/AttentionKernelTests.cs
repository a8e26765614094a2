// FlashAttention kernels (kernels/TinyLlama.Kernels/AttentionFlash*.cs) against AttentionRef
// (src/TinyLlama.Core/Ops/Reference/AttentionRef.cs, f64, full T x S matrices, textbook softmax backward):
// o, lse, dq, dk, dv at small odd shapes with GQA ratios 1, 2 and 4, causal and not, S > T (KV cache),
// S < T (rows that see no key: o = 0, lse = -inf), one decoded token, partial tiles, both tile
// configurations (D <= 64 and 64 < D <= 128), empty T or S, the host-side validation, the portable exp/log,
// and compilation of every kernel to PTX for sm_80 (no GPU needed). Runs on ILGPU's
// CPU accelerator with 32-lane warps (and on CUDA with TINYLLAMA_TEST_CUDA=1, see GemmKernelTests.cs).
//
// Tolerance: 1e-5 (1 + |x|). The kernels compute in f32: scores are D-long dot products of N(0, 1) values
// (error ~ sqrt(D) 6e-8 |score|), exp turns an absolute score error into a relative one, and dk, dv sum up
// to G T such terms; the CPU fast path sees errors up to 1.2e-6 on similar cases (FusedAttentionTests).
// A wrong mask, a missed tile, a wrong kv head or a lost rescale moves outputs by O(0.1) or more.
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Ops.Reference;

namespace TinyLlama.Tests.Ilgpu;

[Collection(KernelAcceleratorCollection.Name)]
public class AttentionKernelTests(KernelAcceleratorFixture fixture)
{
    public static TheoryData<int, int, int, int, int, int, bool> Cases() => new()
    {
        // (B, H, KVH, T, S, D, causal)
        { 1, 2, 2, 5, 5, 8, true },        // MHA, square causal
        { 2, 4, 2, 33, 40, 16, true },     // GQA 2, S > T (cache), two query tiles in the backward
        { 1, 4, 1, 7, 19, 8, false },      // MQA (GQA 4), no mask
        { 1, 2, 1, 7, 4, 8, true },        // S < T: the first 3 rows see no key
        { 1, 1, 1, 3, 37, 64, false },     // D = 64: one full key tile plus a 5-key tail
        { 1, 2, 2, 1, 9, 16, true },       // decoding one token
        { 1, 4, 2, 19, 21, 72, true },     // 64 < D <= 128: the wide tile configuration, partial tiles
    };

    private static double[] RandN(Random rng, int n)
    {
        var x = new double[n];
        for (int i = 0; i < n; i++)
        {
            // Box-Muller, rounded to f32 so that the reference sees exactly the kernel's inputs.
            double u = 1 - rng.NextDouble(), w = rng.NextDouble();
            x[i] = (float)(Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * w));
        }
        return x;
    }

    private static float[] ToFloat(double[] x) => x.Select(v => (float)v).ToArray();

    private static void AssertClose(string what, double[] expected, float[] got, string context)
    {
        Assert.Equal(expected.Length, got.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            if (double.IsNegativeInfinity(expected[i]))
            {
                if (!float.IsNegativeInfinity(got[i])) Assert.Fail($"{context}: {what}[{i}] = {got[i]}, expected -inf");
                continue;
            }
            double tol = 1e-5 * (1 + Math.Abs(expected[i]));
            if (!(Math.Abs(got[i] - expected[i]) <= tol))
                Assert.Fail($"{context}: {what}[{i}] = {got[i]}, expected {expected[i]} (tolerance {tol:g3})");
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ForwardAndBackwardMatchReference(int b, int h, int kvh, int t, int s, int d, bool causal)
    {
        var rng = new Random(17 + t * 31 + s);
        double[] q = RandN(rng, b * h * t * d), k = RandN(rng, b * kvh * s * d), v = RandN(rng, b * kvh * s * d), dO = RandN(rng, b * h * t * d);
        double scale = (float)(1.0 / Math.Sqrt(d));
        var oRef = new double[q.Length];
        var lseRef = new double[b * h * t];
        var dqRef = new double[q.Length];
        var dkRef = new double[k.Length];
        var dvRef = new double[v.Length];
        AttentionRef.Forward(q, k, v, b, h, kvh, t, s, d, scale, causal, oRef, lseRef);
        AttentionRef.Backward(q, k, v, dO, b, h, kvh, t, s, d, scale, causal, dqRef, dkRef, dvRef);

        var args = new AttentionArgs(b, h, kvh, t, s, d, (float)scale, causal);
        foreach (var acc in fixture.Accelerators)
        {
            string context = $"{acc.AcceleratorType} B={b} H={h} KVH={kvh} T={t} S={s} D={d} causal={causal}";
            using var qB = acc.Allocate1D(ToFloat(q));
            using var kB = acc.Allocate1D(ToFloat(k));
            using var vB = acc.Allocate1D(ToFloat(v));
            using var gB = acc.Allocate1D(ToFloat(dO));
            // Outputs start as garbage: the kernels must overwrite, not accumulate.
            using var oB = acc.Allocate1D(Enumerable.Repeat(7f, q.Length).ToArray());
            using var lseB = acc.Allocate1D(Enumerable.Repeat(7f, lseRef.Length).ToArray());
            using var dqB = acc.Allocate1D(Enumerable.Repeat(7f, q.Length).ToArray());
            using var dkB = acc.Allocate1D(Enumerable.Repeat(7f, k.Length).ToArray());
            using var dvB = acc.Allocate1D(Enumerable.Repeat(7f, v.Length).ToArray());
            using var deltaB = acc.Allocate1D<float>(FlashAttention.DeltaLength(args));

            FlashAttention.Forward(acc, acc.DefaultStream, in args, qB.View, kB.View, vB.View, oB.View, lseB.View);
            FlashAttention.Backward(acc, acc.DefaultStream, in args, qB.View, kB.View, vB.View, oB.View, lseB.View, gB.View,
                                    dqB.View, dkB.View, dvB.View, deltaB.View);
            acc.Synchronize();

            AssertClose("o", oRef, oB.GetAsArray1D(), context);
            AssertClose("lse", lseRef, lseB.GetAsArray1D(), context);
            AssertClose("dq", dqRef, dqB.GetAsArray1D(), context);
            AssertClose("dk", dkRef, dkB.GetAsArray1D(), context);
            AssertClose("dv", dvRef, dvB.GetAsArray1D(), context);
        }
    }

    [Fact]
    public void EmptyKeysGiveZeroOutputsAndMinusInfinity()
    {
        var args = new AttentionArgs(1, 2, 1, 3, 0, 8, 0.5f, false);
        foreach (var acc in fixture.Accelerators)
        {
            using var q = acc.Allocate1D(Enumerable.Repeat(1f, 2 * 3 * 8).ToArray());
            using var kv = acc.Allocate1D<float>(1);
            using var o = acc.Allocate1D(Enumerable.Repeat(7f, 2 * 3 * 8).ToArray());
            using var lse = acc.Allocate1D(Enumerable.Repeat(7f, 6).ToArray());
            using var dq = acc.Allocate1D(Enumerable.Repeat(7f, 2 * 3 * 8).ToArray());
            using var delta = acc.Allocate1D<float>(6);
            FlashAttention.Forward(acc, acc.DefaultStream, in args, q.View, kv.View, kv.View, o.View, lse.View);
            FlashAttention.Backward(acc, acc.DefaultStream, in args, q.View, kv.View, kv.View, o.View, lse.View, q.View, dq.View, kv.View, kv.View, delta.View);
            acc.Synchronize();
            Assert.All(o.GetAsArray1D(), x => Assert.Equal(0f, x));
            Assert.All(lse.GetAsArray1D(), x => Assert.Equal(float.NegativeInfinity, x));
            Assert.All(dq.GetAsArray1D(), x => Assert.Equal(0f, x));
        }
    }

    [Fact]
    public void ValidationRejectsBadShapesBeforeLaunching()
    {
        var acc = fixture.Accelerators[0];
        using var buf = acc.Allocate1D<float>(64);
        var x = buf.View;
        Assert.Throws<ArgumentException>(() => FlashAttention.Forward(acc, acc.DefaultStream, new AttentionArgs(1, 3, 2, 2, 2, 4, 1f, true), x, x, x, x, x));
        Assert.Throws<NotSupportedException>(() => FlashAttention.Forward(acc, acc.DefaultStream, new AttentionArgs(1, 1, 1, 2, 2, 0, 1f, true), x, x, x, x, x));
        Assert.Throws<NotSupportedException>(() => FlashAttention.Forward(acc, acc.DefaultStream, new AttentionArgs(1, 1, 1, 1, 1, 129, 1f, true), x, x, x, x, x));
        Assert.Throws<ArgumentOutOfRangeException>(() => FlashAttention.Forward(acc, acc.DefaultStream, new AttentionArgs(1, 2, 1, 5, 4, 8, 1f, true), x, x, x, x, x));
        Assert.Throws<ArgumentOutOfRangeException>(() => FlashAttention.Forward(acc, acc.DefaultStream, new AttentionArgs(1, -1, 1, 5, 4, 8, 1f, true), x, x, x, x, x));
        var ok = new AttentionArgs(1, 2, 1, 2, 3, 8, 1f, true);   // q 32, k 24, lse 4: fits 64
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            FlashAttention.Backward(acc, acc.DefaultStream, in ok, x, x, x, x, x, x, x, x, x, x.SubView(0, 3)));   // delta needs 4
    }

    /// <summary>
    /// The portable exp and log the kernels use off CUDA (ex2/lg2.approx on CUDA): within 4 ulp of the
    /// correctly rounded f64 result over the ranges attention produces (exp of scores minus a max, log of a
    /// positive sum), including subnormal inputs to log, and exact at exp(0), exp(-inf) and log(1).
    /// </summary>
    [Fact]
    public void PortableExpAndLogAreAccurate()
    {
        Assert.Equal(1f, AttentionMath.Exp(0f));
        Assert.Equal(0f, AttentionMath.Exp(float.NegativeInfinity));
        Assert.Equal(0f, AttentionMath.Log(1f));
        var rng = new Random(5);
        for (int i = 0; i < 20000; i++)
        {
            float x = (float)(rng.NextDouble() * 170 - 85);
            double want = Math.Exp(x);
            Assert.True(Math.Abs(AttentionMath.Exp(x) - want) <= 4 * 6e-8 * want, $"exp({x}) = {AttentionMath.Exp(x)}, want {want}");
            float y = (float)Math.Exp(rng.NextDouble() * 180 - 100);   // 1e-43 .. 1e35, subnormals included
            double ln = Math.Log(y);
            Assert.True(Math.Abs(AttentionMath.Log(y) - ln) <= 4 * 6e-8 * Math.Max(1, Math.Abs(ln)), $"log({y}) = {AttentionMath.Log(y)}, want {ln}");
        }
    }

    /// <summary>Every attention kernel compiles to PTX for sm_80 (see PtxCompiler), exp and log as ex2/lg2.approx.</summary>
    [Fact]
    public void KernelsCompileToPtxForSm80()
    {
        Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams> fwd64 = FlashAttention.AttentionForwardKernel64, fwd128 = FlashAttention.AttentionForwardKernel128;
        Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams> delta = FlashAttention.AttentionBackwardDeltaKernel;
        Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams> dkdv64 = FlashAttention.AttentionBackwardDkDvKernel64, dkdv128 = FlashAttention.AttentionBackwardDkDvKernel128;
        Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams> dq64 = FlashAttention.AttentionBackwardDqKernel64, dq128 = FlashAttention.AttentionBackwardDqKernel128;
        foreach (var forward in new Delegate[] { fwd64, fwd128 })
        {
            string ptx = PtxCompiler.Compile(forward.Method);
            Assert.Contains("ex2.approx.ftz.f32", ptx);
            Assert.Contains("lg2.approx.ftz.f32", ptx);
            Assert.Contains("shfl.sync.bfly.b32", ptx);
        }
        Assert.Contains("shfl.sync.bfly.b32", PtxCompiler.Compile(delta.Method));
        foreach (var backward in new Delegate[] { dkdv64, dkdv128, dq64, dq128 })
            Assert.Contains("ex2.approx.ftz.f32", PtxCompiler.Compile(backward.Method));
    }
}
