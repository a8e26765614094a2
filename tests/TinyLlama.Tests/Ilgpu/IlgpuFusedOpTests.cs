// RMSNorm, RoPE, SwiGLU, MatMul (naive kernel) and attention (naive kernels) on the ILGPU backend
// (CPU accelerator) against the CPU backend, forward and backward, at odd sizes.
using TinyLlama.Backends;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Ilgpu.IlgpuTestUtil;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")]
public class IlgpuFusedOpTests
{
    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void RmsNormForwardAndBackwardMatchCpu(DType dtype)
    {
        // weight is a strided slice (every other element of a [26] tensor); the backend densifies it.
        CheckRmsNorm(dtype, 7, 13, 30);
    }

    [Fact]
    public void RmsNormWeightGradientSumsSeveralChunksLikeCpu()
    {
        // N C = 33280 >= 2 * 16384: dWeight is summed from two chunks of rows on both backends.
        CheckRmsNorm(DType.F32, 128, 260, 31);
    }

    private static void CheckRmsNorm(DType dtype, int n, int c, ulong seed)
    {
        var (x, xDev) = Both(RandN(seed, dtype, n, c));
        var (w, wDev) = Both(RandN(seed + 1, dtype, 2 * c), t => t.Slice(0, 0, 2 * c, 2));
        var (y, yDev) = Zeros(dtype, n, c);
        var (r, rDev) = Zeros(dtype, n);
        Cpu.RmsNorm(x, w, 1e-5, y, r);
        Backend.RmsNorm(xDev, wDev, 1e-5, yDev, rDev);
        AssertClose(y, yDev, $"rmsnorm y {dtype.Name()}");
        AssertClose(r, rDev, $"rmsnorm rstd {dtype.Name()}");
        var (dy, dyDev) = Both(RandN(seed + 2, dtype, n, c));
        var (dx, dxDev) = Zeros(dtype, n, c);
        var (dw, dwDev) = Zeros(dtype, c);
        Cpu.RmsNormBackward(dy, x, w, r, dx, dw);
        Backend.RmsNormBackward(dyDev, xDev, wDev, rDev, dxDev, dwDev);
        AssertClose(dx, dxDev, $"rmsnorm dx {dtype.Name()}");
        AssertClose(dw, dwDev, $"rmsnorm dWeight {dtype.Name()}");
    }

    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void RopeMatchesCpuForBothLayoutsAndTheInverse(DType dtype)
    {
        var (x, xDev) = Both(RandN(40, dtype, 2, 5, 3, 8));
        var (cos, sin) = Functional.RopeTables(Functional.RopeInverseFrequencies(8), 3, 5, dtype);
        var cosDev = cos.To(Dev);
        var sinDev = sin.To(Dev);
        foreach (var layout in Enum.GetValues<RopeLayout>())
            foreach (bool inverse in new[] { false, true })
            {
                var (y, yDev) = Zeros(dtype, 2, 5, 3, 8);
                Cpu.Rope(x, cos, sin, layout, inverse, y);
                Backend.Rope(xDev, cosDev, sinDev, layout, inverse, yDev);
                AssertClose(y, yDev, $"rope {layout} inverse={inverse} {dtype.Name()}");
            }
    }

    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void SwiGluForwardAndBackwardMatchCpu(DType dtype)
    {
        var (g, gDev) = Both(RandN(41, dtype, 3, 17) * 3.0);
        var (u, uDev) = Both(RandN(42, dtype, 3, 17));
        var (dy, dyDev) = Both(RandN(43, dtype, 3, 17));
        var (y, yDev) = Zeros(dtype, 3, 17);
        Cpu.SwiGlu(g, u, y);
        Backend.SwiGlu(gDev, uDev, yDev);
        AssertClose(y, yDev, $"swiglu {dtype.Name()}");
        var (dg, dgDev) = Zeros(dtype, 3, 17);
        var (du, duDev) = Zeros(dtype, 3, 17);
        Cpu.SwiGluBackward(g, u, dy, dg, du);
        Backend.SwiGluBackward(gDev, uDev, dyDev, dgDev, duDev);
        AssertClose(dg, dgDev, $"swiglu dGate {dtype.Name()}");
        AssertClose(du, duDev, $"swiglu dUp {dtype.Name()}");
    }

    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void MatMulMatchesCpuForStridedAndBroadcastOperands(DType dtype)
    {
        // a: permuted [2, 3, 5, 7] view; b: transposed view of [2, 3, 4, 7] -> [2, 3, 7, 4]
        var (a, aDev) = Both(RandN(50, dtype, 3, 2, 5, 7), t => t.Permute(1, 0, 2, 3));
        var (b, bDev) = Both(RandN(51, dtype, 2, 3, 4, 7), t => t.MT);
        var (c, cDev) = Zeros(dtype, 2, 3, 5, 4);
        Cpu.MatMul(a, b, c);
        Backend.MatMul(aDev, bDev, cDev);
        AssertClose(c, cDev, $"batched strided matmul {dtype.Name()}");
        // a broadcast over the batch (stride 0), accumulating into a non-zero c
        var (a2, a2Dev) = Both(RandN(52, dtype, 5, 7), t => t.Expand(3, 5, 7));
        var (b2, b2Dev) = Both(RandN(53, dtype, 3, 7, 6));
        var (c2, c2Dev) = Both(RandN(54, dtype, 3, 5, 6));
        Cpu.MatMul(a2, b2, c2, accumulate: true);
        Backend.MatMul(a2Dev, b2Dev, c2Dev, accumulate: true);
        AssertClose(c2, c2Dev, $"broadcast accumulating matmul {dtype.Name()}");
        // K = 0: zeros
        var (c3, c3Dev) = Both(RandN(55, dtype, 2, 3));
        Backend.MatMul(Tensor.Zeros([2, 0], dtype, Dev), Tensor.Zeros([0, 3], dtype, Dev), c3Dev);
        Cpu.MatMul(Tensor.Zeros([2, 0], dtype), Tensor.Zeros([0, 3], dtype), c3);
        AssertEqual(c3, c3Dev, "matmul with K = 0");
    }

    [Fact]
    public void MatMulOfHalfInputsAccumulatesInF32LikeCpu()
    {
        foreach (var dtype in new[] { DType.F16, DType.BF16 })
        {
            var aBase = Tensor.Zeros([9, 13], dtype);
            Cpu.Copy(RandN(56, DType.F64, 9, 13), aBase);
            var bBase = Tensor.Zeros([11, 13], dtype);
            Cpu.Copy(RandN(57, DType.F64, 11, 13), bBase);
            var (a, aDev) = Both(aBase);
            var (b, bDev) = Both(bBase, t => t.MT);    // [13, 11] transposed view
            var (c, cDev) = Zeros(DType.F32, 9, 11);
            Cpu.MatMul(a, b, c);
            Backend.MatMul(aDev, bDev, cDev);
            AssertClose(c, cDev, $"{dtype.Name()} inputs, f32 accumulation");
        }
    }

    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void AttentionForwardAndBackwardMatchCpu(DType dtype)
    {
        // Grouped-query (H = 4, KVH = 2); S > T (KV-cache decoding), S < T (the first causal rows see no key), S = T.
        foreach (var (t, s) in new[] { (5, 7), (5, 3), (6, 6) })
            foreach (bool causal in new[] { true, false })
                CheckAttention(dtype, 2, 4, 2, t, s, 6, causal);
    }

    private static void CheckAttention(DType dtype, int b, int h, int kvh, int t, int s, int d, bool causal)
    {
        string what = $"attention T={t} S={s} causal={causal} {dtype.Name()}";
        ulong seed = (ulong)(t * 100 + s * 10 + (causal ? 1 : 0));
        var (q, qDev) = Both(RandN(seed, dtype, b, h, t, d));
        var (k, kDev) = Both(RandN(seed + 1, dtype, b, kvh, s, d));
        var (v, vDev) = Both(RandN(seed + 2, dtype, b, kvh, s, d));
        double scale = 1 / Math.Sqrt(d);
        var (o, oDev) = Zeros(dtype, b, h, t, d);
        var (lse, lseDev) = Zeros(dtype, b, h, t);
        Cpu.Attention(q, k, v, scale, causal, o, lse);
        Backend.Attention(qDev, kDev, vDev, scale, causal, oDev, lseDev);
        AssertClose(o, oDev, what + " o");
        AssertClose(lse, lseDev, what + " lse");
        var (dO, dODev) = Both(RandN(seed + 3, dtype, b, h, t, d));
        var (dq, dqDev) = Zeros(dtype, b, h, t, d);
        var (dk, dkDev) = Zeros(dtype, b, kvh, s, d);
        var (dv, dvDev) = Zeros(dtype, b, kvh, s, d);
        Cpu.AttentionBackward(q, k, v, o, lse, dO, scale, causal, dq, dk, dv);
        Backend.AttentionBackward(qDev, kDev, vDev, oDev, lseDev, dODev, scale, causal, dqDev, dkDev, dvDev);
        AssertClose(dq, dqDev, what + " dq");
        AssertClose(dk, dkDev, what + " dk");
        AssertClose(dv, dvDev, what + " dv");
    }
}
