// FlashAttention on ILGPU: causal grouped-query scaled dot-product attention that never stores the
// T x S score matrix in device memory. Forward here; backward in AttentionFlashBackward.cs.
//   FlashAttention: Dao et al., "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness", 2022.
//   FlashAttention-2: Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning", 2023.
// The op: IBackend.Attention / AttentionBackward (src/TinyLlama.Core/Backends/IBackend.cs); its definition
// is AttentionRef (src/TinyLlama.Core/Ops/Reference/AttentionRef.cs), which the tests use as the oracle.
//
// Sizes: B batch, H query heads, KVH kv heads (H = G KVH; query head h reads kv head h / G), T queries,
// S keys, D head size (1..128). q, o, dO, dq are (B, H, T, D); k, v, dk, dv are (B, KVH, S, D); lse and
// delta are (B, H, T); all dense, f32. Causal masking is aligned bottom-right: query t sees keys
// s <= t + S - T (the T queries are the last T of S positions, as with a KV cache). A row that sees no
// key gets o = 0 and lse = -inf.
//
// Forward, per query row i, online softmax over key tiles (m running max, l running sum):
//   s = scale q_i K_j^T (masked: -inf);  m' = max(m, max s);  p = e^(s - m');  l = l e^(m - m') + sum p;
//   o = o e^(m - m') + p V_j;  at the end o_i = o / l and lse_i = m + log l.
//
// Tiling (forward): one group of 128 threads per (query tile, b * H + h). The Q tile (BQ x D), one K and
// one V tile (BK x D) and the score tile (BQ x BK) live in shared memory; the row statistics m, l and the
// rescale factor in shared arrays; the output tile (BQ x D) in registers: each thread owns two 4 x 4
// blocks of it. Scores: each thread computes 4 x 4 blocks of S (a D-long dot product per element, 8
// shared loads per 16 FMAs). Softmax: 128 / BQ adjacent lanes share a row and combine their maxima and
// sums with warp shuffles. Blocks take rows r, r + BQ/4, r + BQ/2, ... and columns likewise (interleaved)
// so that a warp's shared loads are broadcasts or consecutive words; row lengths are D + 1 and BK + 1
// (odd) so that the four rows of a block fall in different banks.
//   D <= 64:  BQ = 64, BK = 32 (42 KiB of shared memory)      D <= 128: BQ = 32, BK = 16 (35 KiB)
// Key tiles past the last key the tile's last row can see are skipped (causal), so a causal square
// attention does about half the work. Global traffic: each group reads its Q tile once and K, V once per
// query tile, i.e. K and V are read T / BQ times per head; O and lse are written once.
//
// exp and log come from AttentionMath (end of this file): ex2/lg2.approx through inline PTX on CUDA, plain
// arithmetic elsewhere, so the kernels need neither ILGPU.Algorithms nor libdevice.
// This is a SIMT (CUDA-core, f32) kernel; a tensor-core version (mma.sync on f16/bf16 tiles, as in
// GemmTensorCore.cs) is the obvious next step, and what PyTorch's SDPA uses.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace TinyLlama.Kernels;

/// <summary>
/// Sizes of one attention call: q (B, H, T, D), k and v (B, KVH, S, D), scale applied to q k^T, causal
/// mask aligned bottom-right (query t sees keys s &lt;= t + S - T).
/// </summary>
public readonly record struct AttentionArgs(int B, int H, int KVH, int T, int S, int D, float Scale, bool Causal);

/// <summary>Scalar kernel parameters of the attention kernels.</summary>
internal struct AttentionParams
{
    public int B, H, KVH, T, S, D;
    /// <summary>G = H / KVH query heads per kv head.</summary>
    public int Group;
    /// <summary>S - T: query t sees keys s &lt;= t + Shift when causal.</summary>
    public int Shift;
    public int Causal;
    public float Scale;
}

/// <summary>FlashAttention forward and backward launchers; kernels are compiled once per accelerator and cached.</summary>
public static partial class FlashAttention
{
    /// <summary>Largest head size the kernels serve.</summary>
    public const int MaxHeadSize = 128;

    /// <summary>Threads per group of every attention kernel (4 warps of 32).</summary>
    internal const int Threads = 128;

    private const int MaxGridY = 65535;

    // Forward tile configurations (see the header): queries per tile, keys per tile, padded head size.
    private const int Fwd64Q = 64, Fwd64K = 32;
    private const int Fwd128Q = 32, Fwd128K = 16;
    internal const int Fwd64SharedBytes = ((Fwd64Q + 2 * Fwd64K) * (64 + 1) + Fwd64Q * (Fwd64K + 1) + 3 * Fwd64Q) * sizeof(float);
    internal const int Fwd128SharedBytes = ((Fwd128Q + 2 * Fwd128K) * (128 + 1) + Fwd128Q * (Fwd128K + 1) + 3 * Fwd128Q) * sizeof(float);

    /// <summary>
    /// o = softmax(scale q k^T + mask) v and lse = log-sum-exp of the masked scaled scores, launched on
    /// <paramref name="stream"/> without waiting. Views are dense and start at index 0 (slice them with
    /// SubView); every size is checked before anything is launched.
    /// </summary>
    /// <param name="accelerator">The accelerator the views live on.</param>
    /// <param name="stream">The stream to launch on.</param>
    /// <param name="args">Sizes, scale and masking.</param>
    /// <param name="q">(B, H, T, D)</param>
    /// <param name="k">(B, KVH, S, D)</param>
    /// <param name="v">(B, KVH, S, D)</param>
    /// <param name="o">(B, H, T, D), written</param>
    /// <param name="lse">(B, H, T), written</param>
    public static void Forward(Accelerator accelerator, AcceleratorStream stream, in AttentionArgs args,
                               ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> o, ArrayView<float> lse)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(stream);
        var p = Validate(in args);
        long qLength = (long)args.B * args.H * args.T * args.D, kvLength = (long)args.B * args.KVH * args.S * args.D;
        CheckView("q", q, qLength);
        CheckView("k", k, kvLength);
        CheckView("v", v, kvLength);
        CheckView("o", o, qLength);
        CheckView("lse", lse, (long)args.B * args.H * args.T);
        bool wide = args.D > 64;
        GemmKernels.RequireGroup(accelerator, Threads, KernelsInfo.WarpSize, wide ? Fwd128SharedBytes : Fwd64SharedBytes, "flash attention");
        int qTile = wide ? Fwd128Q : Fwd64Q;
        if (args.T == 0 || args.B * args.H == 0) return;

        var config = new KernelConfig(new Index3D(Ceil(args.T, qTile), GridY(args.B * args.H), 1), new Index3D(Threads, 1, 1));
        var kernel = wide
            ? KernelCache.Get(accelerator, "attention-forward-128", static a => a.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(AttentionForwardKernel128))
            : KernelCache.Get(accelerator, "attention-forward-64", static a => a.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionParams>(AttentionForwardKernel64));
        kernel(stream, config, q, k, v, o, lse, p);
    }

    /// <summary>Checks the sizes and packs the kernel parameters.</summary>
    internal static AttentionParams Validate(in AttentionArgs args)
    {
        if (args.B < 0 || args.H < 0 || args.KVH < 0 || args.T < 0 || args.S < 0)
            throw new ArgumentOutOfRangeException(nameof(args), $"attention: negative size in {args}");
        if (args.D < 1 || args.D > MaxHeadSize)
            throw new NotSupportedException($"attention: head size {args.D} is outside 1..{MaxHeadSize}");
        if (args.KVH == 0 ? args.H != 0 : args.H % args.KVH != 0)
            throw new ArgumentException($"attention: H = {args.H} is not a multiple of KVH = {args.KVH}");
        if (!float.IsFinite(args.Scale))
            throw new ArgumentException($"attention: scale {args.Scale} is not finite");
        if ((long)args.B * args.H * args.T * args.D > int.MaxValue || (long)args.B * args.KVH * args.S * args.D > int.MaxValue)
            throw new NotSupportedException($"attention: {args} has more than int.MaxValue elements per tensor");
        return new AttentionParams
        {
            B = args.B, H = args.H, KVH = args.KVH, T = args.T, S = args.S, D = args.D,
            Group = args.KVH == 0 ? 1 : args.H / args.KVH, Shift = args.S - args.T,
            Causal = args.Causal ? 1 : 0, Scale = args.Scale,
        };
    }

    private static void CheckView(string name, ArrayView<float> view, long needed)
    {
        if (needed > 0 && !view.IsValid) throw new ArgumentException($"attention: {name} has no buffer");
        if (view.Length < needed)
            throw new ArgumentOutOfRangeException(name, $"attention: {name} has {view.Length} elements, needs {needed}");
    }

    private static int GridY(long groups) =>
        groups <= MaxGridY ? (int)groups : throw new NotSupportedException($"attention: {groups} heads exceed the grid limit {MaxGridY}");

    private static int Ceil(int x, int tile) => (x + tile - 1) / tile;

    // ---------------------------------------------------------------- forward kernels

    /// <summary>Forward for D &lt;= 64: query tiles of 64, key tiles of 32.</summary>
    internal static void AttentionForwardKernel64(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
                                                  ArrayView<float> o, ArrayView<float> lse, AttentionParams p)
    {
        var sQ = SharedMemory.Allocate<float>(Fwd64Q * (64 + 1));        // sQ is (BQ, D), row length 65
        var sK = SharedMemory.Allocate<float>(Fwd64K * (64 + 1));        // sK is (BK, D)
        var sV = SharedMemory.Allocate<float>(Fwd64K * (64 + 1));        // sV is (BK, D)
        var sP = SharedMemory.Allocate<float>(Fwd64Q * (Fwd64K + 1));    // sP is (BQ, BK): scores, then probabilities
        var sM = SharedMemory.Allocate<float>(Fwd64Q);                   // running max per row
        var sL = SharedMemory.Allocate<float>(Fwd64Q);                   // running sum per row
        var sCorr = SharedMemory.Allocate<float>(Fwd64Q);                // e^(m_old - m_new) of the latest tile
        ForwardTile(q, k, v, o, lse, p, sQ, sK, sV, sP, sM, sL, sCorr, Fwd64Q, Fwd64K, 64);
    }

    /// <summary>Forward for 64 &lt; D &lt;= 128: query tiles of 32, key tiles of 16.</summary>
    internal static void AttentionForwardKernel128(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
                                                   ArrayView<float> o, ArrayView<float> lse, AttentionParams p)
    {
        var sQ = SharedMemory.Allocate<float>(Fwd128Q * (128 + 1));
        var sK = SharedMemory.Allocate<float>(Fwd128K * (128 + 1));
        var sV = SharedMemory.Allocate<float>(Fwd128K * (128 + 1));
        var sP = SharedMemory.Allocate<float>(Fwd128Q * (Fwd128K + 1));
        var sM = SharedMemory.Allocate<float>(Fwd128Q);
        var sL = SharedMemory.Allocate<float>(Fwd128Q);
        var sCorr = SharedMemory.Allocate<float>(Fwd128Q);
        ForwardTile(q, k, v, o, lse, p, sQ, sK, sV, sP, sM, sL, sCorr, Fwd128Q, Fwd128K, 128);
    }

    /// <summary>
    /// The forward pass of one query tile (bq rows) of one (b, h), given its shared buffers; bq, bk and
    /// dmax are constants of the calling kernel. bq * dmax = 4096: two 4 x 4 output blocks per thread.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ForwardTile(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> o, ArrayView<float> lse,
                                    AttentionParams p, ArrayView<float> sQ, ArrayView<float> sK, ArrayView<float> sV, ArrayView<float> sP,
                                    ArrayView<float> sM, ArrayView<float> sL, ArrayView<float> sCorr, int bq, int bk, int dmax)
    {
        int ld = dmax + 1, ldp = bk + 1;
        int tid = Group.IdxX;
        int bh = Grid.IdxY;
        int b = bh / p.H, h = bh - b * p.H;
        int qBase = bh * p.T * p.D;
        int kvBase = (b * p.KVH + h / p.Group) * p.S * p.D;
        int i0 = Grid.IdxX * bq;
        int nRows = IntrinsicMath.Min(bq, p.T - i0);
        // Keys seen by the tile's last row; later key tiles are skipped.
        int kEnd = p.Causal != 0 ? IntrinsicMath.Clamp(i0 + nRows + p.Shift, 0, p.S) : p.S;

        LoadRows(q, qBase + i0 * p.D, nRows, p.D, sQ, bq, dmax, tid);
        if (tid < bq)
        {
            sM[tid] = float.NegativeInfinity;
            sL[tid] = 0f;
        }
        Group.Barrier();

        // Output blocks: (bq / 4) x (dmax / 4) = 256 blocks of 4 x 4, blocks tid and tid + 128.
        int nRB = bq / 4, nCB = dmax / 4;
        int oRow0 = tid / nCB, oCol0 = tid - oRow0 * nCB;
        int oRow1 = (tid + Threads) / nCB, oCol1 = tid + Threads - oRow1 * nCB;
        Acc4x4 out0 = default, out1 = default;

        // Softmax: lanes tpr * row .. tpr * row + tpr - 1 share a row, each with kpt keys.
        int tpr = Threads / bq, kpt = bk / tpr;
        int sRow = tid / tpr, sPart = tid - sRow * tpr;
        int sRB = bq / 4, sCB = bk / 4, nSB = sRB * sCB;

        for (int j0 = 0; j0 < kEnd; j0 += bk)
        {
            int nKeys = IntrinsicMath.Min(bk, kEnd - j0);
            LoadRows(k, kvBase + j0 * p.D, nKeys, p.D, sK, bk, dmax, tid);
            LoadRows(v, kvBase + j0 * p.D, nKeys, p.D, sV, bk, dmax, tid);
            Group.Barrier();

            // sP = scale Q K^T, -inf where masked.
            for (int sb = tid; sb < nSB; sb += Threads)
            {
                int rb = sb / sCB, cb = sb - rb * sCB;
                var s = DotBlock(sQ, rb, sRB, sK, cb, sCB, ld, p.D);
                for (int i = 0; i < 4; i++)
                    for (int j = 0; j < 4; j++)
                    {
                        int r = rb + sRB * i, c = cb + sCB * j;
                        bool visible = c < nKeys && (p.Causal == 0 || j0 + c <= i0 + r + p.Shift);
                        sP[r * ldp + c] = visible ? s.Get(i, j) * p.Scale : float.NegativeInfinity;
                    }
            }
            Group.Barrier();

            // Online softmax of row sRow: new max, probabilities in place, rescale factor, running sum.
            {
                int at = sRow * ldp + sPart * kpt;
                float mOld = sM[sRow];
                float tileMax = float.NegativeInfinity;
                for (int c = 0; c < kpt; c++) tileMax = IntrinsicMath.Max(tileMax, sP[at + c]);
                for (int lanes = 1; lanes < tpr; lanes <<= 1) tileMax = IntrinsicMath.Max(tileMax, Warp.ShuffleXor(tileMax, lanes));
                float mNew = IntrinsicMath.Max(mOld, tileMax);
                bool none = mNew == float.NegativeInfinity;   // nothing visible yet: keep everything at 0
                float sum = 0f;
                for (int c = 0; c < kpt; c++)
                {
                    float e = none ? 0f : AttentionMath.Exp(sP[at + c] - mNew);
                    sP[at + c] = e;
                    sum += e;
                }
                for (int lanes = 1; lanes < tpr; lanes <<= 1) sum += Warp.ShuffleXor(sum, lanes);
                if (sPart == 0)
                {
                    float corr = none ? 1f : AttentionMath.Exp(mOld - mNew);
                    sCorr[sRow] = corr;
                    sL[sRow] = sL[sRow] * corr + sum;
                    sM[sRow] = mNew;
                }
            }
            Group.Barrier();

            // O = O corr + P V
            out0.ScaleRows(sCorr[oRow0], sCorr[oRow0 + nRB], sCorr[oRow0 + 2 * nRB], sCorr[oRow0 + 3 * nRB]);
            MulBlock(ref out0, sP, oRow0, nRB, ldp, sV, oCol0, nCB, ld, nKeys);
            out1.ScaleRows(sCorr[oRow1], sCorr[oRow1 + nRB], sCorr[oRow1 + 2 * nRB], sCorr[oRow1 + 3 * nRB]);
            MulBlock(ref out1, sP, oRow1, nRB, ldp, sV, oCol1, nCB, ld, nKeys);
            Group.Barrier();
        }

        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
            {
                StoreNormalized(o, qBase + i0 * p.D, p.D, nRows, sL, oRow0 + nRB * i, oCol0 + nCB * j, out0.Get(i, j));
                StoreNormalized(o, qBase + i0 * p.D, p.D, nRows, sL, oRow1 + nRB * i, oCol1 + nCB * j, out1.Get(i, j));
            }
        if (tid < nRows)
        {
            float l = sL[tid];
            lse[bh * p.T + i0 + tid] = l > 0f ? sM[tid] + AttentionMath.Log(l) : float.NegativeInfinity;
        }
    }

    /// <summary>o[r, d] = acc / l_r (0 when the row saw no key), inside the tile's valid rows and columns.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreNormalized(ArrayView<float> o, int baseIndex, int d, int nRows, ArrayView<float> sL, int r, int c, float acc)
    {
        if (r >= nRows || c >= d) return;
        float l = sL[r];
        o[baseIndex + r * d + c] = l > 0f ? acc / l : 0f;
    }

    // ---------------------------------------------------------------- tile helpers (also used by the backward)

    /// <summary>
    /// Copies rows 0..n-1 of the dense (n, d) block starting at src[start] into the shared (rows, dmax)
    /// tile dst (row length dmax + 1), zero-filling rows n.. and columns d..; all threads of the group.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void LoadRows(ArrayView<float> src, int start, int n, int d, ArrayView<float> dst, int rows, int dmax, int tid)
    {
        for (int e = tid; e < rows * dmax; e += Threads)
        {
            int r = e / dmax, c = e - r * dmax;
            bool inside = r < n && c < d;
            float x = src[inside ? start + r * d + c : 0];
            dst[r * (dmax + 1) + c] = inside ? x : 0f;
        }
    }

    /// <summary>
    /// acc[i, j] = sum_{c &lt; n} x[xr + xStep i, c] y[yr + yStep j, c]: a 4 x 4 block of x y^T from two
    /// shared tiles of row length ld.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Acc4x4 DotBlock(ArrayView<float> x, int xr, int xStep, ArrayView<float> y, int yr, int yStep, int ld, int n)
    {
        Acc4x4 acc = default;
        int x0 = xr * ld, x1 = x0 + xStep * ld, x2 = x1 + xStep * ld, x3 = x2 + xStep * ld;
        int y0 = yr * ld, y1 = y0 + yStep * ld, y2 = y1 + yStep * ld, y3 = y2 + yStep * ld;
        for (int c = 0; c < n; c++)
            acc.Fma(x[x0 + c], x[x1 + c], x[x2 + c], x[x3 + c], y[y0 + c], y[y1 + c], y[y2 + c], y[y3 + c]);
        return acc;
    }

    /// <summary>
    /// acc[i, j] += sum_{c &lt; n} w[wr + wStep i, c] v[c, vc + vStep j]: a 4 x 4 block of w v from a shared
    /// (rows, n) tile w of row length ldw and a shared (n, cols) tile v of row length ldv.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void MulBlock(ref Acc4x4 acc, ArrayView<float> w, int wr, int wStep, int ldw, ArrayView<float> v, int vc, int vStep, int ldv, int n)
    {
        int w0 = wr * ldw, w1 = w0 + wStep * ldw, w2 = w1 + wStep * ldw, w3 = w2 + wStep * ldw;
        for (int c = 0; c < n; c++)
        {
            int vr = c * ldv + vc;
            acc.Fma(w[w0 + c], w[w1 + c], w[w2 + c], w[w3 + c], v[vr], v[vr + vStep], v[vr + 2 * vStep], v[vr + 3 * vStep]);
        }
    }
}

/// <summary>
/// e^x and ln x for the attention kernels without ILGPU math intrinsics: ILGPU 1.5's PTX backend lowers
/// only base-2 exp/log natively (MathF.Exp/Log on CUDA would need ILGPU.Algorithms), so CUDA gets the
/// ex2.approx / lg2.approx instructions through inline PTX (relative error about 2^-22) and every other
/// accelerator a portable version built from plain arithmetic and bit operations (within a few f32 ulp),
/// which is what the CPU tests run.
/// </summary>
internal static class AttentionMath
{
    private const float Log2E = 1.44269504088896341f;
    private const float Ln2 = 0.693147180559945309f;
    private const float Ln2Hi = 0.693145751953125f;        // 0x3F317200: n * Ln2Hi is exact for |n| < 2^11
    private const float Ln2Lo = 1.42860676533018704e-6f;   // ln 2 - Ln2Hi

    /// <summary>e^x; 0 for x = -inf (and for results below f32's normal range).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Exp(float x)
    {
        if (CudaAsm.IsSupported)
        {
            // As CUDA's __expf: 2^(x log2 e); the rounding of the product adds about |x| 2^-24 relative
            // error, harmless here because the arguments are scores minus their running maximum (<= 0) and
            // large negative ones give negligible probabilities.
            CudaAsm.Emit("ex2.approx.ftz.f32 %0, %1;", out float r, x * Log2E);
            return r;
        }
        return ExpPortable(x);
    }

    /// <summary>ln x for x &gt; 0 (the kernels never pass anything else).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Log(float x)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("lg2.approx.ftz.f32 %0, %1;", out float r, x);
            return r * Ln2;
        }
        return LogPortable(x);
    }

    /// <summary>
    /// e^x = 2^n e^r with n = round(x log2 e) and r = x - n ln 2 (Cody-Waite: ln 2 split in a high part
    /// exact in n ln2Hi and a low part), |r| &lt;= ln 2 / 2, e^r by its Taylor series to degree 7
    /// (truncation below 1e-8).
    /// </summary>
    internal static float ExpPortable(float x)
    {
        if (!(x > -87.33654f)) return 0f;                   // -inf, and results that would be subnormal (flushed, as ex2.approx.ftz does)
        if (x >= 88.72284f) return float.PositiveInfinity;
        float k = x * Log2E;
        int n = k >= 0f ? (int)(k + 0.5f) : -(int)(0.5f - k);
        float r = x - n * Ln2Hi - n * Ln2Lo;
        float p = 1f + r * (1f + r * (0.5f + r * (1f / 6 + r * (1f / 24 + r * (1f / 120 + r * (1f / 720 + r * (1f / 5040)))))));
        if (n > 127) return p * 2f * Interop.IntAsFloat(254u << 23);   // 2^128 itself is not a finite f32
        return p * Interop.IntAsFloat((uint)(n + 127) << 23);
    }

    /// <summary>
    /// ln x = e ln 2 + ln m with x = m 2^e, m in [sqrt(1/2), sqrt(2)), and ln m = 2 atanh(s) =
    /// 2 (s + s^3/3 + s^5/5 + s^7/7 + s^9/9 + s^11/11), s = (m - 1) / (m + 1), |s| &lt;= 0.172 (truncation below 1e-9).
    /// </summary>
    internal static float LogPortable(float x)
    {
        if (!(x > 0f)) return x == 0f ? float.NegativeInfinity : float.NaN;
        if (x == float.PositiveInfinity) return x;
        uint bits = Interop.FloatAsInt(x);
        int e = (int)((bits >> 23) & 0xFF);
        if (e == 0)
        {
            // Subnormal: scale into the normal range first.
            bits = Interop.FloatAsInt(x * 8388608f);   // 2^23
            e = (int)((bits >> 23) & 0xFF) - 23;
        }
        float m = Interop.IntAsFloat((bits & 0x007F_FFFFu) | 0x3F80_0000u);   // [1, 2)
        e -= 127;
        if (m > 1.41421356f)
        {
            m *= 0.5f;
            e++;
        }
        float s = (m - 1f) / (m + 1f), s2 = s * s;
        float lnM = 2f * s * (1f + s2 * (1f / 3 + s2 * (1f / 5 + s2 * (1f / 7 + s2 * (1f / 9 + s2 * (1f / 11))))));
        return e * Ln2 + lnM;
    }
}
