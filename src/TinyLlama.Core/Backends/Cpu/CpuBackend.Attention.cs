// Causal grouped-query scaled dot-product attention on the CPU, FlashAttention style: the T x S score
// matrix is never materialised beyond one tile.
//   FlashAttention: Dao et al., "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness", 2022.
//   FlashAttention-2: Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning", 2023.
//   Grouped-query attention: Ainslie et al., "GQA: Training Generalized Multi-Query Transformer Models", 2023.
// Reference: Ops/Reference/AttentionRef.cs. Autograd wrapper: Ops/Functional.Attention.cs.
//
// Sizes: B batch, H query heads, KVH kv heads (H = G * KVH; query head h reads kv head h / G), T queries,
// S keys, D head size. Causal masking is aligned bottom-right (query t sees keys s <= t + S - T), which is
// what decoding with a KV cache needs: the T new queries are the last T positions of the S keys.
//
// Forward, per query row i (online softmax; m running max, l running sum, both start at -inf and 0):
//   for each key tile j:  s = scale * q_i K_j^T (visible keys only)
//                         m' = max(m, max s);  l = l e^(m - m') + sum e^(s - m');  o = o e^(m - m') + e^(s - m') V_j
//   o_i = o / l,  lse_i = m + log l
// A row that sees no key at all (only possible when S < T) gets o = 0 and lse = -inf, as FlashAttention does.
//
// Backward (FlashAttention-2, Algorithm 2): with Di = rowsum(dO_i * O_i) and P_ij = exp(scale q_i k_j - lse_i),
//   dV_j += P_ij dO_i;   dP_ij = dO_i . v_j;   dS_ij = P_ij (dP_ij - Di)
//   dQ_i += scale dS_ij k_j;   dK_j += scale dS_ij q_i
// Work is split over (b, kv head): one work item owns dK and dV of its kv head and dQ of the G query
// heads that read it, so the GQA sums need no atomics and are deterministic. (The cost: B * KVH work
// items, which leaves cores idle when B * KVH is below the core count.)
using System.Buffers;
using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>Query rows per tile: one forward work item.</summary>
    private const int AttnBlockQ = 32;

    /// <summary>Keys per tile: K and V tiles of 64 x 64 f32 take 32 KiB, about one L1 cache.</summary>
    private const int AttnBlockK = 64;

    public void Attention(Tensor q, Tensor k, Tensor v, double scale, bool causal, Tensor o, Tensor lse)
    {
        CheckFloat(q, "attention");
        CheckAttentionShapes("attention", q, k, v);
        if (q.DType == DType.F32) AttentionTyped<float>(q, k, v, (float)scale, causal, o, lse);
        else AttentionTyped<double>(q, k, v, scale, causal, o, lse);
    }

    private static void CheckAttentionShapes(string op, Tensor q, Tensor k, Tensor v)
    {
        if (q.Rank != 4 || k.Rank != 4 || !k.shape.AsSpan().SequenceEqual(v.shape) || q.shape[0] != k.shape[0] || q.shape[3] != k.shape[3]
            || k.shape[1] == 0 || q.shape[1] % k.shape[1] != 0)
            throw new ArgumentException($"{op}: q {Shapes.Format(q.shape)}, k {Shapes.Format(k.shape)}, v {Shapes.Format(v.shape)} are not q [B, H, T, D] with k, v [B, KVH, S, D] and H a multiple of KVH");
        if (q.DType != k.DType || q.DType != v.DType)
            throw new ArgumentException($"{op}: dtypes {q.DType.Name()}, {k.DType.Name()}, {v.DType.Name()} differ");
    }

    private static void AttentionTyped<T>(Tensor q, Tensor k, Tensor v, T scale, bool causal, Tensor o, Tensor lse)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        // q, o are (B, H, T, D); k, v are (B, KVH, S, D); lse is (B, H, T)
        int b = q.shape[0], h = q.shape[1], t = q.shape[2], d = q.shape[3], kvh = k.shape[1], s = k.shape[2];
        int group = h / Math.Max(kvh, 1), shift = s - t;
        int qBlocks = (t + AttnBlockQ - 1) / AttnBlockQ;
        // k and v may be views (a KV cache narrowed to S tokens): rows of D are dense and consecutive,
        // but the batch and head strides are free; both share the same strides (checked below). Only the
        // strides of dimensions larger than 1 count: one position (S = 1) may carry any row stride.
        var kStrides = Shapes.SteppedStrides(k.shape, k.strides);
        if (!HasDenseRows(k.shape, kStrides) || !kStrides.AsSpan().SequenceEqual(Shapes.SteppedStrides(v.shape, v.strides)))
            throw new ArgumentException("attention: k and v need dense rows (strides [.., .., D, 1]) and equal strides");
        int kvStrideB = kStrides[0], kvStrideH = kStrides[1];
        CpuParallel.For(b * h * qBlocks, 4L * AttnBlockQ * s * d, (start, end) =>
        {
            var qs = Span<T>(q);
            var ks = Host(k).AsSpan<T>().Slice(k.Offset);
            var vs = Host(v).AsSpan<T>().Slice(v.Offset);
            var os = Span<T>(o);
            var ls = Span<T>(lse);
            Span<T> m = stackalloc T[AttnBlockQ];      // running max of each row of the tile
            Span<T> l = stackalloc T[AttnBlockQ];      // running sum of exp(score - m)
            Span<T> p = stackalloc T[AttnBlockK];      // scores, then probabilities, of one row against one key tile
            for (int item = start; item < end; item++)
            {
                int qb = item % qBlocks, bh = item / qBlocks;
                int kvBase = bh / h * kvStrideB + bh % h / group * kvStrideH;   // kv head (b, h / G)
                int i0 = qb * AttnBlockQ, i1 = Math.Min(t, i0 + AttnBlockQ);
                os.Slice((bh * t + i0) * d, (i1 - i0) * d).Clear();
                m.Fill(T.NegativeInfinity);
                l.Clear();
                // Keys the last row of the tile can see; later key tiles are skipped entirely.
                int kEnd = causal ? Math.Clamp(i1 + shift, 0, s) : s;
                for (int j0 = 0; j0 < kEnd; j0 += AttnBlockK)
                {
                    int j1 = Math.Min(kEnd, j0 + AttnBlockK);
                    var kTile = ks.Slice(kvBase + j0 * d, (j1 - j0) * d);
                    var vTile = vs.Slice(kvBase + j0 * d, (j1 - j0) * d);
                    for (int i = i0; i < i1; i++)
                    {
                        int n = (causal ? Math.Min(j1, i + shift + 1) : j1) - j0;   // visible keys of this row in the tile
                        if (n <= 0) continue;
                        var sc = p.Slice(0, n);
                        var orow = os.Slice((bh * t + i) * d, d);
                        DotRows(qs.Slice((bh * t + i) * d, d), kTile, sc, scale);
                        int r = i - i0;
                        T mNew = T.Max(m[r], TensorPrimitives.Max<T>(sc));
                        T correction = T.Exp(m[r] - mNew);   // 0 on the first tile (m = -inf)
                        TensorPrimitives.Subtract<T>(sc, mNew, sc);
                        TensorPrimitives.Exp<T>(sc, sc);
                        l[r] = l[r] * correction + TensorPrimitives.Sum<T>(sc);
                        if (correction != T.One) TensorPrimitives.Multiply<T>(orow, correction, orow);
                        AccumulateRows(orow, sc, vTile);
                        m[r] = mNew;
                    }
                }
                for (int i = i0; i < i1; i++)
                {
                    int r = i - i0;
                    if (l[r] == T.Zero) { ls[bh * t + i] = T.NegativeInfinity; continue; }   // saw no key: o stays 0
                    TensorPrimitives.Multiply<T>(os.Slice((bh * t + i) * d, d), T.One / l[r], os.Slice((bh * t + i) * d, d));
                    ls[bh * t + i] = m[r] + T.Log(l[r]);
                }
            }
        });
    }

    /// <summary>True when (B, KVH, S, D) with these stepped strides has contiguous rows of D, one after another.</summary>
    internal static bool HasDenseRows(int[] shape, int[] stepped) =>
        (shape[3] == 1 || stepped[3] == 1) && (shape[2] == 1 || stepped[2] == shape[3]);

    public void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dO, double scale, bool causal, Tensor dq, Tensor dk, Tensor dv)
    {
        CheckFloat(q, "attention backward");
        CheckAttentionShapes("attention backward", q, k, v);
        if (q.DType == DType.F32) AttentionBackwardTyped<float>(q, k, v, o, lse, dO, (float)scale, causal, dq, dk, dv);
        else AttentionBackwardTyped<double>(q, k, v, o, lse, dO, scale, causal, dq, dk, dv);
    }

    private static void AttentionBackwardTyped<T>(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dO, T scale, bool causal,
                                                  Tensor dq, Tensor dk, Tensor dv)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        // q, o, dO, dq are (B, H, T, D); k, v, dk, dv are (B, KVH, S, D); lse is (B, H, T)
        int b = q.shape[0], h = q.shape[1], t = q.shape[2], d = q.shape[3], kvh = k.shape[1], s = k.shape[2];
        int group = h / Math.Max(kvh, 1), shift = s - t;
        // Di is (B, H, T): rowsum(dO * O), computed by the work item that owns the row.
        var di = ArrayPool<T>.Shared.Rent(b * h * t);
        try
        {
            CpuParallel.For(b * kvh, 10L * group * t * s * d, (start, end) =>
            {
                var qs = Span<T>(q);
                var ks = Span<T>(k);
                var vs = Span<T>(v);
                var os = Span<T>(o);
                var ls = Span<T>(lse);
                var gs = Span<T>(dO);
                var dqs = Span<T>(dq);
                var dks = Span<T>(dk);
                var dvs = Span<T>(dv);
                Span<T> p = stackalloc T[AttnBlockK];                     // P of one row against the key tile
                Span<T> ds = stackalloc T[AttnBlockK];                    // dP, then dS, of that row
                Span<T> pT = stackalloc T[AttnBlockK * AttnBlockQ];       // P tile, transposed: (key, row)
                Span<T> dsT = stackalloc T[AttnBlockK * AttnBlockQ];      // scale * dS tile, transposed
                for (int item = start; item < end; item++)
                {
                    int bi = item / kvh, kvBase = item * s * d;
                    int h0 = item % kvh * group;                         // first query head reading this kv head
                    dks.Slice(kvBase, s * d).Clear();
                    dvs.Slice(kvBase, s * d).Clear();
                    for (int g = 0; g < group; g++)
                    {
                        int bh = bi * h + h0 + g;
                        dqs.Slice(bh * t * d, t * d).Clear();
                        for (int i = 0; i < t; i++)
                            di[bh * t + i] = TensorPrimitives.Dot<T>(gs.Slice((bh * t + i) * d, d), os.Slice((bh * t + i) * d, d));
                    }
                    for (int j0 = 0; j0 < s; j0 += AttnBlockK)
                    {
                        int j1 = Math.Min(s, j0 + AttnBlockK), nk = j1 - j0;
                        var kTile = ks.Slice(kvBase + j0 * d, nk * d);
                        var vTile = vs.Slice(kvBase + j0 * d, nk * d);
                        for (int g = 0; g < group; g++)
                        {
                            int bh = bi * h + h0 + g;
                            // Rows before rStart see none of this tile's keys.
                            for (int i0 = causal ? Math.Max(0, j0 - shift) : 0; i0 < t; i0 += AttnBlockQ)
                            {
                                int i1 = Math.Min(t, i0 + AttnBlockQ), nr = i1 - i0;
                                for (int i = i0; i < i1; i++)
                                {
                                    int r = i - i0, rowOff = (bh * t + i) * d;
                                    int n = causal ? Math.Clamp(i + shift + 1 - j0, 0, nk) : nk;
                                    var pr = p.Slice(0, n);
                                    var dsr = ds.Slice(0, n);
                                    // P = exp(scale q k - lse), recomputed from the saved log-sum-exp
                                    DotRows(qs.Slice(rowOff, d), kTile.Slice(0, n * d), pr, scale);
                                    TensorPrimitives.Subtract<T>(pr, ls[bh * t + i], pr);
                                    TensorPrimitives.Exp<T>(pr, pr);
                                    // dS = P (dP - Di) with dP = dO v
                                    DotRows(gs.Slice(rowOff, d), vTile.Slice(0, n * d), dsr, T.One);
                                    TensorPrimitives.Subtract<T>(dsr, di[bh * t + i], dsr);
                                    TensorPrimitives.Multiply<T>(dsr, pr, dsr);
                                    TensorPrimitives.Multiply<T>(dsr, scale, dsr);
                                    // dQ_i += scale dS K
                                    AccumulateRows(dqs.Slice(rowOff, d), dsr, kTile.Slice(0, n * d));
                                    for (int c = 0; c < nk; c++)
                                    {
                                        pT[c * nr + r] = c < n ? pr[c] : T.Zero;
                                        dsT[c * nr + r] = c < n ? dsr[c] : T.Zero;
                                    }
                                }
                                // dV_j += P^T dO and dK_j += scale dS^T Q over the rows of the tile
                                var gTile = gs.Slice((bh * t + i0) * d, nr * d);
                                var qTile = qs.Slice((bh * t + i0) * d, nr * d);
                                for (int c = 0; c < nk; c++)
                                {
                                    AccumulateRows(dvs.Slice(kvBase + (j0 + c) * d, d), pT.Slice(c * nr, nr), gTile);
                                    AccumulateRows(dks.Slice(kvBase + (j0 + c) * d, d), dsT.Slice(c * nr, nr), qTile);
                                }
                            }
                        }
                    }
                }
            });
        }
        finally
        {
            ArrayPool<T>.Shared.Return(di);
        }
    }

    // ---------------- tile kernels ----------------

    /// <summary>
    /// scores[c] = scale * (a . rows[c]) for the n = scores.Length rows of the dense (n, d) block
    /// <paramref name="rows"/>, d = a.Length. Four rows at a time share each load of a.
    /// </summary>
    private static void DotRows<T>(ReadOnlySpan<T> a, ReadOnlySpan<T> rows, Span<T> scores, T scale)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int d = a.Length, n = scores.Length;
        if (rows.Length < n * d) throw new ArgumentException("attention: key tile shorter than its score row");
        ref T ar = ref MemoryMarshal.GetReference(a);
        ref T rr = ref MemoryMarshal.GetReference(rows);
        int w = Vector256<T>.Count;
        int dv = Vector256.IsHardwareAccelerated ? d - d % w : 0;
        int c = 0;
        for (; c + 4 <= n; c += 4)
        {
            ref T r0 = ref Unsafe.Add(ref rr, c * d);
            ref T r1 = ref Unsafe.Add(ref r0, d);
            ref T r2 = ref Unsafe.Add(ref r1, d);
            ref T r3 = ref Unsafe.Add(ref r2, d);
            var s0 = Vector256<T>.Zero;
            var s1 = Vector256<T>.Zero;
            var s2 = Vector256<T>.Zero;
            var s3 = Vector256<T>.Zero;
            for (int i = 0; i < dv; i += w)
            {
                var x = Vector256.LoadUnsafe(ref ar, (nuint)i);
                s0 = MulAdd(x, Vector256.LoadUnsafe(ref r0, (nuint)i), s0);
                s1 = MulAdd(x, Vector256.LoadUnsafe(ref r1, (nuint)i), s1);
                s2 = MulAdd(x, Vector256.LoadUnsafe(ref r2, (nuint)i), s2);
                s3 = MulAdd(x, Vector256.LoadUnsafe(ref r3, (nuint)i), s3);
            }
            T t0 = Vector256.Sum(s0), t1 = Vector256.Sum(s1), t2 = Vector256.Sum(s2), t3 = Vector256.Sum(s3);
            for (int i = dv; i < d; i++)
            {
                T x = Unsafe.Add(ref ar, i);
                t0 += x * Unsafe.Add(ref r0, i);
                t1 += x * Unsafe.Add(ref r1, i);
                t2 += x * Unsafe.Add(ref r2, i);
                t3 += x * Unsafe.Add(ref r3, i);
            }
            scores[c] = t0 * scale;
            scores[c + 1] = t1 * scale;
            scores[c + 2] = t2 * scale;
            scores[c + 3] = t3 * scale;
        }
        for (; c < n; c++)
        {
            ref T r0 = ref Unsafe.Add(ref rr, c * d);
            var s0 = Vector256<T>.Zero;
            for (int i = 0; i < dv; i += w)
                s0 = MulAdd(Vector256.LoadUnsafe(ref ar, (nuint)i), Vector256.LoadUnsafe(ref r0, (nuint)i), s0);
            T t0 = Vector256.Sum(s0);
            for (int i = dv; i < d; i++) t0 += Unsafe.Add(ref ar, i) * Unsafe.Add(ref r0, i);
            scores[c] = t0 * scale;
        }
    }

    /// <summary>
    /// y += sum_c weights[c] * rows[c] over the n = weights.Length rows of the dense (n, d) block
    /// <paramref name="rows"/>, d = y.Length. Four vectors of y stay in registers while the rows stream by.
    /// </summary>
    private static void AccumulateRows<T>(Span<T> y, ReadOnlySpan<T> weights, ReadOnlySpan<T> rows)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int d = y.Length, n = weights.Length;
        if (rows.Length < n * d) throw new ArgumentException("attention: row tile shorter than its weights");
        ref T yr = ref MemoryMarshal.GetReference(y);
        ref T rr = ref MemoryMarshal.GetReference(rows);
        ref T wr = ref MemoryMarshal.GetReference(weights);
        int w = Vector256<T>.Count, i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 4 * w <= d; i += 4 * w)
            {
                var a0 = Vector256.LoadUnsafe(ref yr, (nuint)i);
                var a1 = Vector256.LoadUnsafe(ref yr, (nuint)(i + w));
                var a2 = Vector256.LoadUnsafe(ref yr, (nuint)(i + 2 * w));
                var a3 = Vector256.LoadUnsafe(ref yr, (nuint)(i + 3 * w));
                for (int c = 0; c < n; c++)
                {
                    var wc = Vector256.Create(Unsafe.Add(ref wr, c));
                    ref T row = ref Unsafe.Add(ref rr, c * d + i);
                    a0 = MulAdd(wc, Vector256.LoadUnsafe(ref row), a0);
                    a1 = MulAdd(wc, Vector256.LoadUnsafe(ref row, (nuint)w), a1);
                    a2 = MulAdd(wc, Vector256.LoadUnsafe(ref row, (nuint)(2 * w)), a2);
                    a3 = MulAdd(wc, Vector256.LoadUnsafe(ref row, (nuint)(3 * w)), a3);
                }
                a0.StoreUnsafe(ref yr, (nuint)i);
                a1.StoreUnsafe(ref yr, (nuint)(i + w));
                a2.StoreUnsafe(ref yr, (nuint)(i + 2 * w));
                a3.StoreUnsafe(ref yr, (nuint)(i + 3 * w));
            }
            for (; i + w <= d; i += w)
            {
                var a0 = Vector256.LoadUnsafe(ref yr, (nuint)i);
                for (int c = 0; c < n; c++)
                    a0 = MulAdd(Vector256.Create(Unsafe.Add(ref wr, c)), Vector256.LoadUnsafe(ref rr, (nuint)(c * d + i)), a0);
                a0.StoreUnsafe(ref yr, (nuint)i);
            }
        }
        for (; i < d; i++)
        {
            T a0 = Unsafe.Add(ref yr, i);
            for (int c = 0; c < n; c++) a0 += Unsafe.Add(ref wr, c) * Unsafe.Add(ref rr, c * d + i);
            Unsafe.Add(ref yr, i) = a0;
        }
    }

    /// <summary>a * b + c, fused into one FMA instruction where the CPU has one (else a multiply and an add).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<T> MulAdd<T>(Vector256<T> a, Vector256<T> b, Vector256<T> c) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
            return Vector256.MultiplyAddEstimate(a.AsSingle(), b.AsSingle(), c.AsSingle()).As<float, T>();
        if (typeof(T) == typeof(double))
            return Vector256.MultiplyAddEstimate(a.AsDouble(), b.AsDouble(), c.AsDouble()).As<double, T>();
        return a * b + c;
    }
}
