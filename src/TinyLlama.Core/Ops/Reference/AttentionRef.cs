// Naive attention: the definition the FlashAttention-style fast path (Backends/Cpu/CpuBackend.Attention.cs)
// is tested against. It materialises the full T x S score matrix of each head and uses the textbook
// softmax backward (dS = P * (dP - rowsum(P * dP))), not FlashAttention's rowsum(dO * O) identity, so
// the two implementations share no algebraic shortcut.
// Math: Vaswani et al., "Attention Is All You Need", 2017: O = softmax(scale Q K^T + mask) V, with
// grouped-query heads (query head h reads kv head h / (H / KVH)) and a causal mask aligned bottom-right
// (query t sees keys s <= t + S - T). A row that sees no key gives O = 0 and lse = -inf.
namespace TinyLlama.Ops.Reference;

/// <summary>Reference grouped-query scaled dot-product attention over dense arrays, in double precision.</summary>
public static class AttentionRef
{
    /// <summary>P (T, S) of one (b, h): softmax of the masked scaled scores (0 where masked); lse (T) written.</summary>
    private static double[] Probabilities(double[] q, double[] k, int qBase, int kBase, int t, int s, int d, double scale, bool causal, double[] lse, int lseBase)
    {
        var p = new double[t * s];
        for (int i = 0; i < t; i++)
        {
            double max = double.NegativeInfinity;
            for (int j = 0; j < s; j++)
            {
                if (causal && j > i + s - t) continue;
                double dot = 0;
                for (int c = 0; c < d; c++) dot += q[qBase + i * d + c] * k[kBase + j * d + c];
                p[i * s + j] = dot * scale;
                max = Math.Max(max, dot * scale);
            }
            if (double.IsNegativeInfinity(max)) { lse[lseBase + i] = double.NegativeInfinity; continue; }
            double sum = 0;
            for (int j = 0; j < s; j++)
            {
                if (causal && j > i + s - t) { p[i * s + j] = 0; continue; }
                p[i * s + j] = Math.Exp(p[i * s + j] - max);
                sum += p[i * s + j];
            }
            for (int j = 0; j < s; j++) p[i * s + j] /= sum;
            lse[lseBase + i] = max + Math.Log(sum);
        }
        return p;
    }

    /// <summary>o = softmax(scale q k^T + mask) v per head; lse = log-sum-exp of the masked scaled scores.</summary>
    public static void Forward(double[] q, double[] k, double[] v, int b, int h, int kvh, int t, int s, int d,
                               double scale, bool causal, double[] o, double[] lse)
    {
        // q is (B, H, T, D); k is (B, KVH, S, D); v is (B, KVH, S, D); o is (B, H, T, D), written; lse is (B, H, T), written
        int group = h / kvh;
        for (int bi = 0; bi < b; bi++)
            for (int hi = 0; hi < h; hi++)
            {
                int qBase = (bi * h + hi) * t * d, kBase = (bi * kvh + hi / group) * s * d;
                var p = Probabilities(q, k, qBase, kBase, t, s, d, scale, causal, lse, (bi * h + hi) * t);
                for (int i = 0; i < t; i++)
                    for (int c = 0; c < d; c++)
                    {
                        double acc = 0;
                        for (int j = 0; j < s; j++) acc += p[i * s + j] * v[kBase + j * d + c];
                        o[qBase + i * d + c] = acc;
                    }
            }
    }

    /// <summary>
    /// dq, dk, dv (overwritten) given dO: dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)),
    /// dQ = scale dS K, dK = scale dS^T Q, with dk and dv summed over the query heads sharing a kv head.
    /// </summary>
    public static void Backward(double[] q, double[] k, double[] v, double[] dO, int b, int h, int kvh, int t, int s, int d,
                                double scale, bool causal, double[] dq, double[] dk, double[] dv)
    {
        // q is (B, H, T, D); k is (B, KVH, S, D); v is (B, KVH, S, D); dO is (B, H, T, D); dq is (B, H, T, D), written; dk is (B, KVH, S, D), written; dv is (B, KVH, S, D), written
        int group = h / kvh;
        Array.Clear(dq);
        Array.Clear(dk);
        Array.Clear(dv);
        var lse = new double[t];
        for (int bi = 0; bi < b; bi++)
            for (int hi = 0; hi < h; hi++)
            {
                int qBase = (bi * h + hi) * t * d, kBase = (bi * kvh + hi / group) * s * d;
                var p = Probabilities(q, k, qBase, kBase, t, s, d, scale, causal, lse, 0);
                var dp = new double[t * s];
                for (int i = 0; i < t; i++)
                    for (int j = 0; j < s; j++)
                    {
                        double acc = 0;
                        for (int c = 0; c < d; c++) acc += dO[qBase + i * d + c] * v[kBase + j * d + c];
                        dp[i * s + j] = acc;
                    }
                for (int i = 0; i < t; i++)
                {
                    double rowDot = 0;
                    for (int j = 0; j < s; j++) rowDot += p[i * s + j] * dp[i * s + j];
                    for (int j = 0; j < s; j++)
                    {
                        double dsij = p[i * s + j] * (dp[i * s + j] - rowDot);
                        for (int c = 0; c < d; c++)
                        {
                            dv[kBase + j * d + c] += p[i * s + j] * dO[qBase + i * d + c];
                            dq[qBase + i * d + c] += scale * dsij * k[kBase + j * d + c];
                            dk[kBase + j * d + c] += scale * dsij * q[qBase + i * d + c];
                        }
                    }
                }
            }
    }
}
