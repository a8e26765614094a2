// Attention: the FlashAttention-style CPU path against the naive reference (Ops/Reference/AttentionRef.cs)
// in f32 and f64 at odd sizes, GQA ratios and KV-cache shapes (S > T, and S < T where early rows see no
// key); the autograd op against softmax(q k^T * scale + mask) v built from primitive ops with repeated kv
// heads; decoding with a cache against the full sequence; gradients against central finite differences
// in f64 with non-contiguous q, k, v.
using TinyLlama.Ops.Reference;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Infrastructure.GradCheck;

namespace TinyLlama.Tests.Ops;

public class FusedAttentionTests
{
    public static TheoryData<int, int, int, int, int, int, bool, DType> Cases()
    {
        var data = new TheoryData<int, int, int, int, int, int, bool, DType>();
        foreach (var dtype in new[] { DType.F32, DType.F64 })
        {
            // (B, H, KVH, T, S, D, causal)
            data.Add(1, 8, 4, 5, 5, 16, true, dtype);      // GQA 8/4, square causal
            data.Add(2, 4, 1, 33, 40, 6, true, dtype);     // MQA 4/1, S > T (cache), D = 6 (SIMD tail), 2 query tiles
            data.Add(1, 3, 3, 1, 7, 2, true, dtype);       // decoding one token, D = 2
            data.Add(2, 3, 3, 33, 33, 16, false, dtype);   // MHA, no mask
            data.Add(1, 4, 2, 70, 150, 8, true, dtype);    // several query and key tiles, S > T
            data.Add(1, 2, 1, 7, 4, 6, true, dtype);       // S < T: the first 3 rows see no key (o = 0, lse = -inf)
            data.Add(1, 2, 2, 3, 66, 64, false, dtype);    // one full key tile plus a 2-key tail, D = 64
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void FastPathMatchesReference(int b, int h, int kvh, int t, int s, int d, bool causal, DType dtype)
    {
        var q = Tensor.RandN([b, h, t, d], new Generator(1), dtype);
        var k = Tensor.RandN([b, kvh, s, d], new Generator(2), dtype);
        var v = Tensor.RandN([b, kvh, s, d], new Generator(3), dtype);
        var dO = Tensor.RandN([b, h, t, d], new Generator(4), dtype);
        double scale = 1.0 / Math.Sqrt(d);
        var o = Tensor.Zeros([b, h, t, d], dtype);
        var lse = Tensor.Zeros([b, h, t], dtype);
        q.Backend.Attention(q, k, v, scale, causal, o, lse);
        var dq = Tensor.Full([b, h, t, d], 7.0, dtype);   // outputs must be overwritten, not accumulated into
        var dk = Tensor.Full([b, kvh, s, d], 7.0, dtype);
        var dv = Tensor.Full([b, kvh, s, d], 7.0, dtype);
        q.Backend.AttentionBackward(q, k, v, o, lse, dO, scale, causal, dq, dk, dv);

        double[] qd = q.ToArray<double>(), kd = k.ToArray<double>(), vd = v.ToArray<double>(), gd = dO.ToArray<double>();
        var oRef = new double[qd.Length];
        var lseRef = new double[b * h * t];
        var dqRef = new double[qd.Length];
        var dkRef = new double[kd.Length];
        var dvRef = new double[vd.Length];
        AttentionRef.Forward(qd, kd, vd, b, h, kvh, t, s, d, scale, causal, oRef, lseRef);
        AttentionRef.Backward(qd, kd, vd, gd, b, h, kvh, t, s, d, scale, causal, dqRef, dkRef, dvRef);

        // f64: online softmax and tiled sums only reorder the arithmetic (observed errors ~3e-15): 1e-13.
        // f32: scores are D-term dot products of N(0, 1) values (error ~ sqrt(D) * 6e-8 * |score|), exp
        // turns an absolute score error into a relative one, and dk, dv sum up to G * T such terms
        // (observed errors up to 1.2e-6 on these cases): 1e-5 on O(1) outputs. A wrong mask or a missed
        // GQA head is off by O(0.1).
        double tol = dtype == DType.F64 ? 1e-13 : 1e-5;
        FusedAssert.Close(oRef, o.ToArray<double>(), tol, tol, "o");
        FusedAssert.Close(lseRef, lse.ToArray<double>(), tol, tol, "lse");
        FusedAssert.Close(dqRef, dq.ToArray<double>(), tol, tol, "dq");
        FusedAssert.Close(dkRef, dk.ToArray<double>(), tol, tol, "dk");
        FusedAssert.Close(dvRef, dv.ToArray<double>(), tol, tol, "dv");
    }

    /// <summary>softmax(q k^T * scale + mask) v with every kv head repeated for its query heads, from primitive ops.</summary>
    private static Tensor AttentionByPrimitives(Tensor q, Tensor k, Tensor v, bool causal, double scale)
    {
        int b = q.Size(0), h = q.Size(1), t = q.Size(2), kvh = k.Size(1), s = k.Size(2), d = k.Size(3), g = h / kvh;
        var kr = k.Unsqueeze(2).Expand(b, kvh, g, s, d).Reshape(b, h, s, d);
        var vr = v.Unsqueeze(2).Expand(b, kvh, g, s, d).Reshape(b, h, s, d);
        var scores = q.MatMul(kr.MT) * scale;
        if (causal)
        {
            // mask [T, S]: -inf where key s is after query t's position t + S - T
            var m = new double[t * s];
            for (int i = 0; i < t; i++)
                for (int j = 0; j < s; j++)
                    m[i * s + j] = j <= i + s - t ? 0 : double.NegativeInfinity;
            scores = scores + Tensor.FromArray(m, [t, s]);
        }
        return scores.Softmax(-1).MatMul(vr);
    }

    [Theory]
    [InlineData(4, 2, 6, 9, true)]
    [InlineData(4, 1, 5, 5, true)]
    [InlineData(3, 3, 4, 7, false)]
    public void MatchesCompositionOfPrimitiveOps(int h, int kvh, int t, int s, bool causal)
    {
        const int b = 2, d = 8;
        var q = RandN(1, b, h, t, d).RequiresGrad_();
        var k = RandN(2, b, kvh, s, d).RequiresGrad_();
        var v = RandN(3, b, kvh, s, d).RequiresGrad_();
        var (q2, k2, v2) = (q.Detach().Clone().RequiresGrad_(), k.Detach().Clone().RequiresGrad_(), v.Detach().Clone().RequiresGrad_());
        var y = Functional.ScaledDotProductAttention(q, k, v, causal);
        var yp = AttentionByPrimitives(q2, k2, v2, causal, 1 / Math.Sqrt(d));
        // Both f64 on the same inputs; the fused path reorders sums and exponentials: 1e-12.
        FusedAssert.Close(yp, y, 1e-12, 1e-12, "o");
        var u = RandN(4, b, h, t, d);
        y.Backward(u);
        yp.Backward(u);
        FusedAssert.Close(q2.Grad!, q.Grad!, 1e-12, 1e-11, "dq");
        FusedAssert.Close(k2.Grad!, k.Grad!, 1e-12, 1e-11, "dk");
        FusedAssert.Close(v2.Grad!, v.Grad!, 1e-12, 1e-11, "dv");
    }

    [Fact]
    public void DecodingWithACacheMatchesTheFullSequence()
    {
        // Bottom-right alignment: the last 3 queries against all 10 cached keys must give the last 3 rows
        // of full causal attention over the 10 positions.
        var q = Tensor.RandN([1, 4, 10, 8], new Generator(1), DType.F64);
        var k = Tensor.RandN([1, 2, 10, 8], new Generator(2), DType.F64);
        var v = Tensor.RandN([1, 2, 10, 8], new Generator(3), DType.F64);
        var full = Functional.ScaledDotProductAttention(q, k, v, causal: true);
        var tail = Functional.ScaledDotProductAttention(q.Narrow(2, 7, 3), k, v, causal: true);
        FusedAssert.Close(full.Narrow(2, 7, 3), tail, 1e-14, 1e-13, "last rows");
    }

    [Fact]
    public void GradientsMatchFiniteDifferences()
    {
        // GQA 4/2, S > T; default GradCheck tolerances (atol 1e-6, rtol 1e-5), see GradCheck.cs.
        Check(t => Functional.ScaledDotProductAttention(t[0], t[1], t[2], causal: true),
              [RandN(1, 1, 4, 3, 4), RandN(2, 1, 2, 5, 4), RandN(3, 1, 2, 5, 4)]);
        // Non-contiguous inputs: q stored [B, T, H, D] and permuted; k a narrowed view of a wider
        // tensor; v transposed from [B, KVH, D, S]. Explicit scale, no mask.
        Check(t => Functional.ScaledDotProductAttention(t[0].Permute(0, 2, 1, 3), t[1].Narrow(3, 1, 4), t[2].Transpose(2, 3), causal: false, scale: 0.7),
              [RandN(4, 2, 3, 3, 4), RandN(5, 2, 1, 4, 6), RandN(6, 2, 1, 4, 4)]);
        // Causal with the same permuted q, MQA 3/1, decoding-like T = 2 against S = 6.
        Check(t => Functional.ScaledDotProductAttention(t[0].Permute(0, 2, 1, 3), t[1], t[2], causal: true),
              [RandN(7, 1, 2, 3, 4), RandN(8, 1, 1, 6, 4), RandN(9, 1, 1, 6, 4)]);
    }

    [Fact]
    public void ShapeErrorsNameTheOpAndShapes()
    {
        var q = Tensor.Zeros([1, 6, 5, 8]);
        var k = Tensor.Zeros([1, 4, 5, 8]);
        var e = Assert.Throws<ArgumentException>(() => Functional.ScaledDotProductAttention(q, k, k));
        Assert.Contains("scaled_dot_product_attention", e.Message);
        Assert.Contains("[1, 6, 5, 8]", e.Message);
        Assert.Contains("[1, 4, 5, 8]", e.Message);
        var e2 = Assert.Throws<ArgumentException>(() => Functional.ScaledDotProductAttention(q, Tensor.Zeros([1, 3, 5, 4]), Tensor.Zeros([1, 3, 5, 4])));
        Assert.Contains("head size", e2.Message);
        var e3 = Assert.Throws<ArgumentException>(() => Functional.ScaledDotProductAttention(q, Tensor.Zeros([1, 3, 5, 8]), Tensor.Zeros([1, 3, 6, 8])));
        Assert.Contains("[1, 3, 6, 8]", e3.Message);
    }
}
