// Naive grouped-query scaled dot-product attention for the ILGPU backend: simple and correct, the
// reference the flash-attention kernels (Attention*.cs) are measured against. Math:
// Backends/Cpu/CpuBackend.Attention.cs and Ops/Reference/AttentionRef.cs:
//   q [B, H, T, D], k and v [B, KVH, S, D]; query head h reads kv head h / (H / KVH); causal masking is
//   aligned bottom-right (query t sees keys s <= t + S - T); o = softmax(scale q k^T + mask) v and
//   lse = log-sum-exp of the masked scaled scores (a row that sees no key: o = 0, lse = -inf).
//   Backward (FlashAttention-2's identities): Di = rowsum(dO_i * O_i), P_ij = exp(scale q_i.k_j - lse_i),
//   dS_ij = P_ij (dO_i.v_j - Di); dQ_i = scale sum_j dS_ij k_j; dK_j = scale sum_i dS_ij q_i; dV_j = sum_i P_ij dO_i,
//   the sums for dK/dV running over every query row of the G = H / KVH heads sharing kv head j's head.
//
// Tiling: none; one thread per row, so there are no barriers and no atomics (deterministic):
//   forward: one thread per query row (b, h, t): online softmax over the visible keys, the output row
//            accumulated in place in o (rescaled when the running max grows). Traffic per row: S D reads
//            of k and of v, S D read-modify-writes of the o row (L1/L2 resident), D reads of q.
//   backward: AttentionDeltaBackwardKernel (Di, one thread per query row); AttentionQueryBackwardKernel
//            (dQ, one thread per query row, recomputing P and dP); AttentionKeyValueBackwardKernel (dK and
//            dV, one thread per key row, recomputing P and dP for the G T query rows that read it).
//            P and dP are computed twice; no T x S matrix is stored.
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Sizes of one attention call.</summary>
public struct AttentionShape
{
    public int B, H, KVH, T, S, D;
    /// <summary>1 for causal masking (bottom-right aligned).</summary>
    public int Causal;

    /// <summary>Number of keys query row t sees.</summary>
    public readonly int VisibleKeys(int t)
    {
        if (Causal == 0) return S;
        int n = t + S - T + 1;
        return n < 0 ? 0 : n > S ? S : n;
    }
}

/// <summary>Naive attention kernels.</summary>
public static class NaiveAttentionKernels
{
    /// <summary>Query row i = (b H + h) T + t: o[i, :] and lse[i].</summary>
    public static void AttentionForwardKernel<T>(Index1D i, ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, T scale, AttentionShape s, ArrayView<T> o, ArrayView<T> lse)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int d = s.D, t = i % s.T, bh = i / s.T;
        int kvBase = KvRow(s, bh) * s.S * d, qBase = i * d;
        for (int c = 0; c < d; c++) o[qBase + c] = T.Zero;
        T m = T.NegativeInfinity, l = T.Zero;
        int visible = s.VisibleKeys(t);
        for (int j = 0; j < visible; j++)
        {
            T score = T.Zero;
            for (int c = 0; c < d; c++) score += q[qBase + c] * k[kvBase + j * d + c];
            score *= scale;
            T mNew = DeviceMath.MaxNaN(m, score);
            T correction = T.Exp(m - mNew);   // 0 for the first key (m = -inf)
            T p = T.Exp(score - mNew);
            l = l * correction + p;
            for (int c = 0; c < d; c++) o[qBase + c] = o[qBase + c] * correction + p * v[kvBase + j * d + c];
            m = mNew;
        }
        if (l == T.Zero) { lse[i] = T.NegativeInfinity; return; }   // saw no key: o stays 0
        T inv = T.One / l;
        for (int c = 0; c < d; c++) o[qBase + c] *= inv;
        lse[i] = m + T.Log(l);
    }

    /// <summary>delta[i] = rowsum(dO[i, :] * o[i, :]) for query row i.</summary>
    public static void AttentionDeltaBackwardKernel<T>(Index1D i, ArrayView<T> o, ArrayView<T> dO, int d, ArrayView<T> delta)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T acc = T.Zero;
        for (int c = 0; c < d; c++) acc += dO[i * d + c] * o[i * d + c];
        delta[i] = acc;
    }

    /// <summary>dq[i, :] for query row i = (b H + h) T + t.</summary>
    public static void AttentionQueryBackwardKernel<T>(Index1D i, ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<T> lse, ArrayView<T> dO,
                                                       ArrayView<T> delta, T scale, AttentionShape s, ArrayView<T> dq)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int d = s.D, t = i % s.T, bh = i / s.T;
        int kvBase = KvRow(s, bh) * s.S * d, qBase = i * d;
        for (int c = 0; c < d; c++) dq[qBase + c] = T.Zero;
        int visible = s.VisibleKeys(t);
        for (int j = 0; j < visible; j++)
        {
            T ds = ScoreGradient(q, k, v, lse, dO, delta, scale, i, qBase, kvBase + j * d, d);
            for (int c = 0; c < d; c++) dq[qBase + c] += ds * k[kvBase + j * d + c];
        }
    }

    /// <summary>dk[j, :] and dv[j, :] for key row j = (b KVH + kvh) S + sIndex.</summary>
    public static void AttentionKeyValueBackwardKernel<T>(Index1D j, ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<T> lse, ArrayView<T> dO,
                                                          ArrayView<T> delta, T scale, AttentionShape s, ArrayView<T> dk, ArrayView<T> dv)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int d = s.D, key = j % s.S, bkv = j / s.S;
        int b = bkv / s.KVH, kvh = bkv - b * s.KVH, group = s.H / s.KVH;
        int kBase = j * d;
        for (int c = 0; c < d; c++) { dk[kBase + c] = T.Zero; dv[kBase + c] = T.Zero; }
        // Query row t sees this key when key <= t + S - T, i.e. t >= key - S + T.
        int firstRow = s.Causal != 0 ? key - s.S + s.T : 0;
        if (firstRow < 0) firstRow = 0;
        for (int g = 0; g < group; g++)
        {
            int bh = b * s.H + kvh * group + g;
            for (int t = firstRow; t < s.T; t++)
            {
                int i = bh * s.T + t, qBase = i * d;
                T score = T.Zero;
                for (int c = 0; c < d; c++) score += q[qBase + c] * k[kBase + c];
                T p = T.Exp(score * scale - lse[i]);
                T dp = T.Zero;
                for (int c = 0; c < d; c++) dp += dO[qBase + c] * v[kBase + c];
                T ds = p * (dp - delta[i]) * scale;
                for (int c = 0; c < d; c++)
                {
                    dv[kBase + c] += p * dO[qBase + c];
                    dk[kBase + c] += ds * q[qBase + c];
                }
            }
        }
    }

    /// <summary>scale dS_ij = scale P_ij (dO_i . v_j - Di) for query row i and the key row starting at kRow.</summary>
    private static T ScoreGradient<T>(ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<T> lse, ArrayView<T> dO, ArrayView<T> delta,
                                      T scale, int i, int qBase, int kRow, int d)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T score = T.Zero, dp = T.Zero;
        for (int c = 0; c < d; c++)
        {
            score += q[qBase + c] * k[kRow + c];
            dp += dO[qBase + c] * v[kRow + c];
        }
        T p = T.Exp(score * scale - lse[i]);
        return p * (dp - delta[i]) * scale;
    }

    /// <summary>The (b, kv head) row index of query (b, h) row bh.</summary>
    private static int KvRow(AttentionShape s, int bh)
    {
        int b = bh / s.H, h = bh - b * s.H;
        return b * s.KVH + h / (s.H / s.KVH);
    }
}
