// FlashAttention backward on ILGPU (FlashAttention-2, Algorithm 2; sizes and layouts in AttentionFlash.cs).
// With the forward's lse, P is recomputed tile by tile instead of stored:
//   delta_i = rowsum(dO_i * O_i)                       (AttentionBackwardDeltaKernel)
//   P_ij = exp(scale q_i . k_j - lse_i)   (0 where masked)
//   dV_j += P_ij dO_i;   dP_ij = dO_i . v_j;   dS_ij = P_ij (dP_ij - delta_i)
//   dK_j += scale dS_ij q_i;   dQ_i += scale dS_ij k_j
//
// Work split, and why. dK and dV of a kv head receive contributions from all G query heads that share it
// (grouped-query attention) and from every query tile; dQ of a query row from every key tile. Rather than
// FlashAttention-2's f32 atomics on dQ, two passes each own their outputs, so there are no atomics, no
// races and the results are deterministic (bitwise reproducible run to run):
//   AttentionBackwardDkDvKernel: one group per (key tile, b * KVH + kv head). It keeps its K and V tiles in
//     shared memory and its dK, dV tile (BKV x D each) in registers, and loops over the G query heads of
//     its kv head and over their query tiles (from the first row that can see the tile when causal):
//     recompute P^T and dP^T (BKV x BQ, the two halves of the group in parallel), form dS^T, accumulate
//     dV += P^T dO and dK += dS^T Q. Written once at the end.
//   AttentionBackwardDqKernel: one group per (query tile, b * H + h). Q, dO, lse and delta tiles in shared
//     memory, dQ (BQ x D) in registers; loops over key tiles (up to the last visible one when causal):
//     recompute P and dP, form dS, accumulate dQ += dS K. Written once at the end.
// The price: P and dP are computed twice (once per pass), 7 tile products per (query tile, key tile)
// pair instead of 5, i.e. about 1.4x the FLOPs of the atomic version.
//
// Tiles (both passes): D <= 64: 32 x 32 (42 KiB of shared memory); D <= 128: 16 x 16 (35 KiB). Each thread
// owns one 4 x 4 block of each register tile (BKV x D and BQ x D = 128 blocks); in the score phase
// threads 0..63 compute P blocks and threads 64..127 dP blocks. Shared row lengths are odd (D + 1,
// tile + 1) as in the forward. Global traffic per pass: the owned tile once, the streamed tiles once per
// owner (Q, dO, lse, delta S / BKV times in the first pass; K and V T / BQ times in the second).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace TinyLlama.Kernels;

public static partial class FlashAttention
{
    private const int Bwd64Tile = 32;
    private const int Bwd128Tile = 16;
    internal const int Bwd64SharedBytes = (4 * Bwd64Tile * (64 + 1) + 2 * Bwd64Tile * (Bwd64Tile + 1) + 2 * Bwd64Tile) * sizeof(float);
    internal const int Bwd128SharedBytes = (4 * Bwd128Tile * (128 + 1) + 2 * Bwd128Tile * (Bwd128Tile + 1) + 2 * Bwd128Tile) * sizeof(float);

    /// <summary>Length of the <c>delta</c> scratch buffer <see cref="Backward"/> needs: B H T floats.</summary>
    public static long DeltaLength(in AttentionArgs args) => (long)args.B * args.H * args.T;

    /// <summary>
    /// dq, dk and dv (overwritten) from dO and the forward's q, k, v, o and lse, launched on
    /// <paramref name="stream"/> without waiting (three kernels in stream order). Views are dense and start
    /// at index 0; every size is checked before anything is launched.
    /// </summary>
    /// <param name="accelerator">The accelerator the views live on.</param>
    /// <param name="stream">The stream to launch on.</param>
    /// <param name="args">Sizes, scale and masking.</param>
    /// <param name="q">(B, H, T, D)</param>
    /// <param name="k">(B, KVH, S, D)</param>
    /// <param name="v">(B, KVH, S, D)</param>
    /// <param name="o">(B, H, T, D), the forward's output</param>
    /// <param name="lse">(B, H, T), the forward's log-sum-exp</param>
    /// <param name="dO">(B, H, T, D)</param>
    /// <param name="dq">(B, H, T, D), written</param>
    /// <param name="dk">(B, KVH, S, D), written</param>
    /// <param name="dv">(B, KVH, S, D), written</param>
    /// <param name="delta">scratch of <see cref="DeltaLength"/> floats, overwritten (rowsum(dO * O))</param>
    public static void Backward(Accelerator accelerator, AcceleratorStream stream, in AttentionArgs args,
                                ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> o, ArrayView<float> lse,
                                ArrayView<float> dO, ArrayView<float> dq, ArrayView<float> dk, ArrayView<float> dv, ArrayView<float> delta)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(stream);
        var p = Validate(in args);
        long qLength = (long)args.B * args.H * args.T * args.D, kvLength = (long)args.B * args.KVH * args.S * args.D;
        long rows = DeltaLength(in args);
        CheckView("q", q, qLength);
        CheckView("k", k, kvLength);
        CheckView("v", v, kvLength);
        CheckView("o", o, qLength);
        CheckView("lse", lse, rows);
        CheckView("dO", dO, qLength);
        CheckView("dq", dq, qLength);
        CheckView("dk", dk, kvLength);
        CheckView("dv", dv, kvLength);
        CheckView("delta", delta, rows);
        bool wide = args.D > 64;
        GemmKernels.RequireGroup(accelerator, Threads, KernelsInfo.WarpSize, wide ? Bwd128SharedBytes : Bwd64SharedBytes, "flash attention backward");
        int tile = wide ? Bwd128Tile : Bwd64Tile;
        var group = new Index3D(Threads, 1, 1);

        if (rows > 0)
        {
            var deltaKernel = KernelCache.Get(accelerator, "attention-backward-delta",
                static a => a.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(AttentionBackwardDeltaKernel));
            deltaKernel(stream, new KernelConfig(new Index3D(Ceil((int)rows, Threads / 32), 1, 1), group), o, dO, delta, p);
        }
        if (args.S > 0 && args.B * args.KVH > 0)
        {
            var kvKernel = wide
                ? KernelCache.Get(accelerator, "attention-backward-dkdv-128", static a => a.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(AttentionBackwardDkDvKernel128))
                : KernelCache.Get(accelerator, "attention-backward-dkdv-64", static a => a.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(AttentionBackwardDkDvKernel64));
            kvKernel(stream, new KernelConfig(new Index3D(Ceil(args.S, tile), GridY(args.B * args.KVH), 1), group), q, k, v, dO, lse, delta, dk, dv, p);
        }
        if (args.T > 0 && args.B * args.H > 0)
        {
            var qKernel = wide
                ? KernelCache.Get(accelerator, "attention-backward-dq-128", static a => a.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(AttentionBackwardDqKernel128))
                : KernelCache.Get(accelerator, "attention-backward-dq-64", static a => a.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(AttentionBackwardDqKernel64));
            qKernel(stream, new KernelConfig(new Index3D(Ceil(args.T, tile), GridY(args.B * args.H), 1), group), q, k, v, dO, lse, delta, dq, p);
        }
    }

    // ---------------------------------------------------------------- delta = rowsum(dO * O)

    /// <summary>delta[row] = sum_d dO[row, d] O[row, d] for the B H T rows: one warp per row, lanes stride over d.</summary>
    internal static void AttentionBackwardDeltaKernel(ArrayView<float> o, ArrayView<float> dO, ArrayView<float> delta, AttentionParams p)
    {
        int lane = Group.IdxX & 31;
        int row = Grid.IdxX * (Threads / 32) + (Group.IdxX >> 5);
        int rows = p.B * p.H * p.T;
        float sum = 0f;
        if (row < rows)
            for (int c = lane; c < p.D; c += 32)
                sum += dO[row * p.D + c] * o[row * p.D + c];
        for (int lanes = 16; lanes > 0; lanes >>= 1) sum += Warp.ShuffleXor(sum, lanes);   // all lanes take part
        if (row < rows && lane == 0) delta[row] = sum;
    }

    // ---------------------------------------------------------------- dK, dV

    internal static void AttentionBackwardDkDvKernel64(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> dO,
                                                       ArrayView<float> lse, ArrayView<float> delta, ArrayView<float> dk, ArrayView<float> dv,
                                                       AttentionParams p)
    {
        var sK = SharedMemory.Allocate<float>(Bwd64Tile * (64 + 1));             // sK is (BKV, D), row length 65
        var sV = SharedMemory.Allocate<float>(Bwd64Tile * (64 + 1));             // sV is (BKV, D)
        var sQ = SharedMemory.Allocate<float>(Bwd64Tile * (64 + 1));             // sQ is (BQ, D)
        var sG = SharedMemory.Allocate<float>(Bwd64Tile * (64 + 1));             // sG is (BQ, D): dO
        var sPT = SharedMemory.Allocate<float>(Bwd64Tile * (Bwd64Tile + 1));     // sPT is (BKV, BQ): P^T
        var sDST = SharedMemory.Allocate<float>(Bwd64Tile * (Bwd64Tile + 1));    // sDST is (BKV, BQ): dP^T, then dS^T
        var sLse = SharedMemory.Allocate<float>(Bwd64Tile);
        var sDelta = SharedMemory.Allocate<float>(Bwd64Tile);
        DkDvTile(q, k, v, dO, lse, delta, dk, dv, p, sK, sV, sQ, sG, sPT, sDST, sLse, sDelta, Bwd64Tile, 64);
    }

    internal static void AttentionBackwardDkDvKernel128(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> dO,
                                                        ArrayView<float> lse, ArrayView<float> delta, ArrayView<float> dk, ArrayView<float> dv,
                                                        AttentionParams p)
    {
        var sK = SharedMemory.Allocate<float>(Bwd128Tile * (128 + 1));
        var sV = SharedMemory.Allocate<float>(Bwd128Tile * (128 + 1));
        var sQ = SharedMemory.Allocate<float>(Bwd128Tile * (128 + 1));
        var sG = SharedMemory.Allocate<float>(Bwd128Tile * (128 + 1));
        var sPT = SharedMemory.Allocate<float>(Bwd128Tile * (Bwd128Tile + 1));
        var sDST = SharedMemory.Allocate<float>(Bwd128Tile * (Bwd128Tile + 1));
        var sLse = SharedMemory.Allocate<float>(Bwd128Tile);
        var sDelta = SharedMemory.Allocate<float>(Bwd128Tile);
        DkDvTile(q, k, v, dO, lse, delta, dk, dv, p, sK, sV, sQ, sG, sPT, sDST, sLse, sDelta, Bwd128Tile, 128);
    }

    /// <summary>dK and dV of one key tile (t keys) of one (b, kv head), summed over its G query heads.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void DkDvTile(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> dO, ArrayView<float> lse,
                                 ArrayView<float> delta, ArrayView<float> dk, ArrayView<float> dv, AttentionParams p,
                                 ArrayView<float> sK, ArrayView<float> sV, ArrayView<float> sQ, ArrayView<float> sG,
                                 ArrayView<float> sPT, ArrayView<float> sDST, ArrayView<float> sLse, ArrayView<float> sDelta, int t, int dmax)
    {
        int ld = dmax + 1, ldt = t + 1;
        int tid = Group.IdxX;
        int bkv = Grid.IdxY;                        // b * KVH + kv head
        int b = bkv / p.KVH, kvh = bkv - b * p.KVH;
        int kvBase = bkv * p.S * p.D;
        int j0 = Grid.IdxX * t;
        int nKeys = IntrinsicMath.Min(t, p.S - j0);
        LoadRows(k, kvBase + j0 * p.D, nKeys, p.D, sK, t, dmax, tid);
        LoadRows(v, kvBase + j0 * p.D, nKeys, p.D, sV, t, dmax, tid);

        // Register tiles dK, dV (t x dmax = 128 blocks of 4 x 4): this thread's block.
        int nRB = t / 4, nCB = dmax / 4;
        int rb = tid / nCB, cb = tid - rb * nCB;
        Acc4x4 dkAcc = default, dvAcc = default;
        // Score blocks (t x t): threads 0..63 make P^T, threads 64..127 dP^T.
        int sRB = t / 4, nSB = sRB * sRB;
        bool makesP = tid < Threads / 2;
        int sFirst = makesP ? tid : tid - Threads / 2;
        // Rows before iStart see no key of this tile.
        int iStart = p.Causal != 0 ? IntrinsicMath.Max(0, j0 - p.Shift) : 0;

        for (int g = 0; g < p.Group; g++)
        {
            int bh = b * p.H + kvh * p.Group + g;
            int qBase = bh * p.T * p.D;
            for (int i0 = iStart; i0 < p.T; i0 += t)
            {
                int nRows = IntrinsicMath.Min(t, p.T - i0);
                LoadRows(q, qBase + i0 * p.D, nRows, p.D, sQ, t, dmax, tid);
                LoadRows(dO, qBase + i0 * p.D, nRows, p.D, sG, t, dmax, tid);
                if (tid < t)
                {
                    bool inside = tid < nRows;
                    float l = lse[inside ? bh * p.T + i0 + tid : 0];
                    float dl = delta[inside ? bh * p.T + i0 + tid : 0];
                    sLse[tid] = inside ? l : 0f;
                    sDelta[tid] = inside ? dl : 0f;
                }
                Group.Barrier();

                // P^T[j, i] = exp(scale k_j . q_i - lse_i) (0 where masked); dP^T[j, i] = v_j . dO_i.
                for (int sb = sFirst; sb < nSB; sb += Threads / 2)
                {
                    int jb = sb / sRB, ib = sb - jb * sRB;
                    var s = makesP ? DotBlock(sK, jb, sRB, sQ, ib, sRB, ld, p.D) : DotBlock(sV, jb, sRB, sG, ib, sRB, ld, p.D);
                    for (int x = 0; x < 4; x++)
                        for (int y = 0; y < 4; y++)
                        {
                            int j = jb + sRB * x, i = ib + sRB * y;
                            if (makesP)
                            {
                                bool visible = j < nKeys && i < nRows && (p.Causal == 0 || j0 + j <= i0 + i + p.Shift);
                                sPT[j * ldt + i] = visible ? AttentionMath.Exp(s.Get(x, y) * p.Scale - sLse[i]) : 0f;
                            }
                            else
                            {
                                sDST[j * ldt + i] = s.Get(x, y);
                            }
                        }
                }
                Group.Barrier();

                // dS^T = P^T (dP^T - delta)
                for (int e = tid; e < t * t; e += Threads)
                {
                    int j = e / t, i = e - j * t;
                    sDST[j * ldt + i] = sPT[j * ldt + i] * (sDST[j * ldt + i] - sDelta[i]);
                }
                Group.Barrier();

                // dV += P^T dO;  dK += dS^T Q (scaled at the end)
                MulBlock(ref dvAcc, sPT, rb, nRB, ldt, sG, cb, nCB, ld, nRows);
                MulBlock(ref dkAcc, sDST, rb, nRB, ldt, sQ, cb, nCB, ld, nRows);
                Group.Barrier();
            }
        }

        for (int x = 0; x < 4; x++)
            for (int y = 0; y < 4; y++)
            {
                int j = rb + nRB * x, c = cb + nCB * y;
                if (j < nKeys && c < p.D)
                {
                    dk[kvBase + (j0 + j) * p.D + c] = dkAcc.Get(x, y) * p.Scale;
                    dv[kvBase + (j0 + j) * p.D + c] = dvAcc.Get(x, y);
                }
            }
    }

    // ---------------------------------------------------------------- dQ

    internal static void AttentionBackwardDqKernel64(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> dO,
                                                     ArrayView<float> lse, ArrayView<float> delta, ArrayView<float> dq, AttentionParams p)
    {
        var sQ = SharedMemory.Allocate<float>(Bwd64Tile * (64 + 1));             // sQ is (BQ, D), row length 65
        var sG = SharedMemory.Allocate<float>(Bwd64Tile * (64 + 1));             // sG is (BQ, D): dO
        var sK = SharedMemory.Allocate<float>(Bwd64Tile * (64 + 1));             // sK is (BK, D)
        var sV = SharedMemory.Allocate<float>(Bwd64Tile * (64 + 1));             // sV is (BK, D)
        var sP = SharedMemory.Allocate<float>(Bwd64Tile * (Bwd64Tile + 1));      // sP is (BQ, BK)
        var sDS = SharedMemory.Allocate<float>(Bwd64Tile * (Bwd64Tile + 1));     // sDS is (BQ, BK): dP, then dS
        var sLse = SharedMemory.Allocate<float>(Bwd64Tile);
        var sDelta = SharedMemory.Allocate<float>(Bwd64Tile);
        DqTile(q, k, v, dO, lse, delta, dq, p, sQ, sG, sK, sV, sP, sDS, sLse, sDelta, Bwd64Tile, 64);
    }

    internal static void AttentionBackwardDqKernel128(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> dO,
                                                      ArrayView<float> lse, ArrayView<float> delta, ArrayView<float> dq, AttentionParams p)
    {
        var sQ = SharedMemory.Allocate<float>(Bwd128Tile * (128 + 1));
        var sG = SharedMemory.Allocate<float>(Bwd128Tile * (128 + 1));
        var sK = SharedMemory.Allocate<float>(Bwd128Tile * (128 + 1));
        var sV = SharedMemory.Allocate<float>(Bwd128Tile * (128 + 1));
        var sP = SharedMemory.Allocate<float>(Bwd128Tile * (Bwd128Tile + 1));
        var sDS = SharedMemory.Allocate<float>(Bwd128Tile * (Bwd128Tile + 1));
        var sLse = SharedMemory.Allocate<float>(Bwd128Tile);
        var sDelta = SharedMemory.Allocate<float>(Bwd128Tile);
        DqTile(q, k, v, dO, lse, delta, dq, p, sQ, sG, sK, sV, sP, sDS, sLse, sDelta, Bwd128Tile, 128);
    }

    /// <summary>dQ of one query tile (t rows) of one (b, h).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void DqTile(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> dO, ArrayView<float> lse,
                               ArrayView<float> delta, ArrayView<float> dq, AttentionParams p,
                               ArrayView<float> sQ, ArrayView<float> sG, ArrayView<float> sK, ArrayView<float> sV,
                               ArrayView<float> sP, ArrayView<float> sDS, ArrayView<float> sLse, ArrayView<float> sDelta, int t, int dmax)
    {
        int ld = dmax + 1, ldt = t + 1;
        int tid = Group.IdxX;
        int bh = Grid.IdxY;
        int b = bh / p.H, h = bh - b * p.H;
        int qBase = bh * p.T * p.D;
        int kvBase = (b * p.KVH + h / p.Group) * p.S * p.D;
        int i0 = Grid.IdxX * t;
        int nRows = IntrinsicMath.Min(t, p.T - i0);
        int kEnd = p.Causal != 0 ? IntrinsicMath.Clamp(i0 + nRows + p.Shift, 0, p.S) : p.S;
        LoadRows(q, qBase + i0 * p.D, nRows, p.D, sQ, t, dmax, tid);
        LoadRows(dO, qBase + i0 * p.D, nRows, p.D, sG, t, dmax, tid);
        if (tid < t)
        {
            bool inside = tid < nRows;
            float l = lse[inside ? bh * p.T + i0 + tid : 0];
            float dl = delta[inside ? bh * p.T + i0 + tid : 0];
            sLse[tid] = inside ? l : 0f;
            sDelta[tid] = inside ? dl : 0f;
        }

        int nRB = t / 4, nCB = dmax / 4;
        int rb = tid / nCB, cb = tid - rb * nCB;
        Acc4x4 dqAcc = default;
        int sRB = t / 4, nSB = sRB * sRB;
        bool makesP = tid < Threads / 2;
        int sFirst = makesP ? tid : tid - Threads / 2;

        for (int j0 = 0; j0 < kEnd; j0 += t)
        {
            int nKeys = IntrinsicMath.Min(t, kEnd - j0);
            LoadRows(k, kvBase + j0 * p.D, nKeys, p.D, sK, t, dmax, tid);
            LoadRows(v, kvBase + j0 * p.D, nKeys, p.D, sV, t, dmax, tid);
            Group.Barrier();

            // P[i, j] = exp(scale q_i . k_j - lse_i) (0 where masked); dP[i, j] = dO_i . v_j.
            for (int sb = sFirst; sb < nSB; sb += Threads / 2)
            {
                int ib = sb / sRB, jb = sb - ib * sRB;
                var s = makesP ? DotBlock(sQ, ib, sRB, sK, jb, sRB, ld, p.D) : DotBlock(sG, ib, sRB, sV, jb, sRB, ld, p.D);
                for (int x = 0; x < 4; x++)
                    for (int y = 0; y < 4; y++)
                    {
                        int i = ib + sRB * x, j = jb + sRB * y;
                        if (makesP)
                        {
                            bool visible = j < nKeys && i < nRows && (p.Causal == 0 || j0 + j <= i0 + i + p.Shift);
                            sP[i * ldt + j] = visible ? AttentionMath.Exp(s.Get(x, y) * p.Scale - sLse[i]) : 0f;
                        }
                        else
                        {
                            sDS[i * ldt + j] = s.Get(x, y);
                        }
                    }
            }
            Group.Barrier();

            // dS = P (dP - delta)
            for (int e = tid; e < t * t; e += Threads)
            {
                int i = e / t, j = e - i * t;
                sDS[i * ldt + j] = sP[i * ldt + j] * (sDS[i * ldt + j] - sDelta[i]);
            }
            Group.Barrier();

            // dQ += dS K (scaled at the end)
            MulBlock(ref dqAcc, sDS, rb, nRB, ldt, sK, cb, nCB, ld, nKeys);
            Group.Barrier();
        }

        for (int x = 0; x < 4; x++)
            for (int y = 0; y < 4; y++)
            {
                int i = rb + nRB * x, c = cb + nCB * y;
                if (i < nRows && c < p.D) dq[qBase + (i0 + i) * p.D + c] = dqAcc.Get(x, y) * p.Scale;
            }
    }
}
