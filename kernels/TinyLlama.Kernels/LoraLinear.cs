// Fused LoRA linear on ILGPU (Hu et al., "LoRA", 2021, eq. 3; PEFT's dropout on the adapter's input):
//
//     c [M, N] = a [M, K] @ b [K, N] + s * (u [M, R] @ v [R, N])   (* mask [M, N] on the second term)
//
// one GEMM with a rank-R term added before c is stored. It serves IBackend.LowRankMatMul (CPU definition
// CpuBackend.Lora.cs; naive reference Ops/Reference/LoraRef.cs and Reference below), which the fused LoRA
// linear (Ops/Functional.Lora.cs) calls for its forward and for dx:
//   forward   y  = x W^T + s u B^T          a = x, b = W^T (a transposed view), u = xd A^T (R = r), v = B^T
//   backward  dx = dy W + mask * (g A)   a = dy, b = W, u = g = s dy B, v = A, mask = dropout's keep-mask
//             (without dropout, no mask: dx = dy W + g A)
// Every operand is read through (row stride, column stride), so transposes cost nothing; c and mask are
// dense row-major. 4 <= R <= 64 in practice; nothing here depends on it.
//
// Versions (LoraVersion; IlgpuBackend.Fused.cs (LowRankMatMul) picks 2 for f32 on accelerators with 32-lane warps and
// 256-thread groups, as IlgpuBackend.MatMul does, and 1 otherwise):
//   1  LoraLinearForwardKernel: one thread per element of c, any float type. It runs the R-long low-rank
//      dot product, scales it (and masks it), then the K-long dot product, all from global memory, and
//      writes c once. Traffic: 2 (K + R) reads per output. The plain path: f64, the CPU accelerator, tests.
//   2  LoraLinearForwardKernel2 (f32): the tiled GEMM of GemmTiled.cs (version 2 there) with the low-rank
//      term as R extra steps along K. A group of 256 threads owns a 128 x 64 tile of c; thread (tx, ty) =
//      (tid % 16, tid / 16) accumulates the 8 x 4 block at rows ty + 16 i, columns tx + 16 j in registers.
//      The group first walks R in steps of 16 through a 128 x 16 tile of u (multiplied by s as it is copied
//      to shared memory) and a 16 x 64 tile of v, then K in steps of 16 through a and b, into the same
//      accumulators: the result is [a | s u] @ [b ; v] without forming either concatenation. With a mask,
//      each thread multiplies its accumulators by its 32 mask values between the two walks, when they hold
//      exactly the low-rank term. The next tile is fetched into registers while the current one is
//      multiplied (one shared buffer, two barriers per tile), as in the GEMM.
//      Traffic: a is read N / 64 times and b M / 128 times (as the GEMM); u adds M R reads per column tile
//      and v R N per row tile, (R / K) of the GEMM's; c is written once (and mask read once). The
//      composition it replaces (GEMM, then a second GEMM for s u B^T into a temporary, then an add) also
//      writes the (M, N) temporary and reads c and it back: 3 M N extra element transfers.
//      Shared memory: (16 x 132 + 16 x 68) x 4 B = 12.5 KiB per group, as the GEMM.
//
// Validation: the host checks every size and that the largest index of each operand lies inside its view
// before a launch (an out-of-range index on the CPU accelerator takes the process down). Edges: out-of-range
// tile elements load as 0 (reading index 0, always valid) and out-of-range outputs are not stored, so M,
// N, K and R need not be multiples of anything.
using System.Numerics;
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace TinyLlama.Kernels;

/// <summary>
/// Sizes and strides (in elements) of c [M, N] = a [M, K] @ b [K, N] + s (u [M, R] @ v [R, N]) (* mask):
/// element (i, j) of an operand x is at i * XRowStride + j * XColStride of its view; c and mask are dense.
/// </summary>
public struct LoraShape
{
    public int M, N, K, R;
    public int ARowStride, AColStride, BRowStride, BColStride;
    public int URowStride, UColStride, VRowStride, VColStride;
    /// <summary>1 when the low-rank term is multiplied elementwise by mask [M, N] (dense, row-major).</summary>
    public int HasMask;
}

/// <summary>Which fused LoRA kernel runs (see the header of LoraLinear.cs).</summary>
public enum LoraVersion
{
    /// <summary>Version 1: one thread per output, any float type.</summary>
    Naive = 1,
    /// <summary>Version 2: 128 x 64 shared-memory tiles, the low-rank term as extra K steps (f32).</summary>
    Tiled = 2,
}

/// <summary>
/// One fused product in f32 for <see cref="LoraLinearKernels.Launch"/>; the views start at each operand's
/// first element. <see cref="Mask"/> is read only when <see cref="LoraShape.HasMask"/> is 1 (pass any valid
/// view otherwise, e.g. <see cref="C"/>).
/// </summary>
public readonly record struct LoraLinearArgs(LoraShape Shape, float Scale, ArrayView<float> A, ArrayView<float> B,
                                             ArrayView<float> U, ArrayView<float> V, ArrayView<float> Mask, ArrayView<float> C);

/// <summary>Fused LoRA linear kernels and their host-side launcher.</summary>
public static class LoraLinearKernels
{
    private const int BM = GemmKernels.TiledBM, BN = GemmKernels.TiledBN, BK = GemmKernels.TiledBK;
    private const int Threads = GemmKernels.TiledThreads;
    /// <summary>Row lengths of the shared tiles, padded by 4 words as in GemmTiled.cs.</summary>
    private const int LdA = BM + 4, LdB = BN + 4;
    private const int SharedBytes = (BK * LdA + BK * LdB) * sizeof(float);

    // ---------------------------------------------------------------- version 1

    /// <summary>Version 1: element i = row N + col of c, one thread each.</summary>
    public static void LoraLinearForwardKernel<T>(Index1D i, ArrayView<T> a, ArrayView<T> b, ArrayView<T> u, ArrayView<T> v,
                                                  ArrayView<T> mask, T scale, ArrayView<T> c, LoraShape s)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int row = i / s.N, col = i - row * s.N;
        T low = scale * Dot(u, row * s.URowStride, s.UColStride, v, col * s.VColStride, s.VRowStride, s.R);
        if (s.HasMask != 0) low *= mask[i];
        c[i] = Dot(a, row * s.ARowStride, s.AColStride, b, col * s.BColStride, s.BRowStride, s.K) + low;
    }

    /// <summary>sum over k &lt; n of x[xi + k xStep] * y[yi + k yStep] (a row of one operand times a column of the other).</summary>
    private static T Dot<T>(ArrayView<T> x, int xi, int xStep, ArrayView<T> y, int yi, int yStep, int n)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T acc = T.Zero;
        for (int k = 0; k < n; k++, xi += xStep, yi += yStep) acc += x[xi] * y[yi];
        return acc;
    }

    // ---------------------------------------------------------------- version 2

    /// <summary>Version 2: the 128 x 64 tile (Grid.IdxY, Grid.IdxX) of c, in f32.</summary>
    internal static void LoraLinearForwardKernel2(ArrayView<float> a, ArrayView<float> b, ArrayView<float> u, ArrayView<float> v,
                                                  ArrayView<float> mask, float scale, ArrayView<float> c, LoraShape p)
    {
        var sA = SharedMemory.Allocate<float>(BK * LdA);   // sA is (BK, BM): a or s u, k-major
        var sB = SharedMemory.Allocate<float>(BK * LdB);   // sB is (BK, BN): b or v
        int tid = Group.IdxX;
        int tx = tid & 15, ty = tid >> 4;
        int m0 = Grid.IdxY * BM, n0 = Grid.IdxX * BN;
        // Copy order of each operand: along its unit stride (either order is correct).
        bool uAlongK = p.UColStride == 1, vAlongN = p.VColStride == 1;
        bool aAlongK = p.AColStride == 1, bAlongN = p.BColStride == 1;
        int rTiles = (p.R + BK - 1) / BK;
        int tiles = rTiles + (p.K + BK - 1) / BK;

        Acc4x4 top = default;      // rows ty + 16 i, i < 4
        Acc4x4 bottom = default;   // rows ty + 64 + 16 i
        TileRegisters regs = default;
        if (tiles > 0) LoadTile(ref regs, a, b, u, v, scale, p, m0, n0, 0, rTiles, tid, uAlongK, vAlongN, aAlongK, bAlongN);
        for (int t = 0; t < tiles; t++)
        {
            bool lowRank = t < rTiles;
            regs.Store(sA, sB, tid, lowRank ? uAlongK : aAlongK, lowRank ? vAlongN : bAlongN);
            Group.Barrier();

            if (t + 1 < tiles) LoadTile(ref regs, a, b, u, v, scale, p, m0, n0, t + 1, rTiles, tid, uAlongK, vAlongN, aAlongK, bAlongN);
            if (t == rTiles && p.HasMask != 0)
            {
                // The accumulators hold exactly s u v here: mask it before a b is added.
                ApplyMask(ref top, mask, p, m0 + ty, n0 + tx);
                ApplyMask(ref bottom, mask, p, m0 + ty + 64, n0 + tx);
            }

            for (int kk = 0; kk < BK; kk++)
            {
                int ia = kk * LdA + ty;
                int ib = kk * LdB + tx;
                float b0 = sB[ib], b1 = sB[ib + 16], b2 = sB[ib + 32], b3 = sB[ib + 48];
                top.Fma(sA[ia], sA[ia + 16], sA[ia + 32], sA[ia + 48], b0, b1, b2, b3);
                bottom.Fma(sA[ia + 64], sA[ia + 80], sA[ia + 96], sA[ia + 112], b0, b1, b2, b3);
            }
            Group.Barrier();
        }
        if (tiles == rTiles && p.HasMask != 0)
        {
            // K = 0: the low-rank term is the whole result.
            ApplyMask(ref top, mask, p, m0 + ty, n0 + tx);
            ApplyMask(ref bottom, mask, p, m0 + ty + 64, n0 + tx);
        }

        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
            {
                StoreC(c, p, m0 + ty + 16 * i, n0 + tx + 16 * j, top.Get(i, j));
                StoreC(c, p, m0 + ty + 64 + 16 * i, n0 + tx + 16 * j, bottom.Get(i, j));
            }
    }

    /// <summary>
    /// Fetches tile t into registers: for t &lt; rTiles the (s u, v) tiles at k0 = 16 t of the low-rank term,
    /// otherwise the (a, b) tiles at k0 = 16 (t - rTiles) of the main product.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadTile(ref TileRegisters regs, ArrayView<float> a, ArrayView<float> b, ArrayView<float> u, ArrayView<float> v,
                                 float scale, LoraShape p, int m0, int n0, int t, int rTiles, int tid,
                                 bool uAlongK, bool vAlongN, bool aAlongK, bool bAlongN)
    {
        if (t < rTiles)
            regs.Load(u, p.URowStride, p.UColStride, v, p.VRowStride, p.VColStride, p.M, p.N, p.R, scale, m0, n0, t * BK, tid, uAlongK, vAlongN);
        else
            regs.Load(a, p.ARowStride, p.AColStride, b, p.BRowStride, p.BColStride, p.M, p.N, p.K, 1f, m0, n0, (t - rTiles) * BK, tid, aAlongK, bAlongN);
    }

    /// <summary>One K step's tiles in flight: this thread's 8 elements of the 128 x 16 left tile and 4 of the 16 x 64 right tile.</summary>
    private struct TileRegisters
    {
        public float A0, A1, A2, A3, A4, A5, A6, A7;
        public float B0, B1, B2, B3;

        /// <summary>
        /// Loads the left tile x [m0 : m0 + 128, k0 : k0 + 16] (times mul) and the right tile
        /// y [k0 : k0 + 16, n0 : n0 + 64] of x [rows, depth] @ y [depth, cols]; 0 outside.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Load(ArrayView<float> x, int xRowStride, int xColStride, ArrayView<float> y, int yRowStride, int yColStride,
                         int rows, int cols, int depth, float mul, int m0, int n0, int k0, int tid, bool xAlongK, bool yAlongN)
        {
            A0 = mul * LoadLeft(x, xRowStride, xColStride, rows, depth, m0, k0, tid, xAlongK);
            A1 = mul * LoadLeft(x, xRowStride, xColStride, rows, depth, m0, k0, tid + 256, xAlongK);
            A2 = mul * LoadLeft(x, xRowStride, xColStride, rows, depth, m0, k0, tid + 512, xAlongK);
            A3 = mul * LoadLeft(x, xRowStride, xColStride, rows, depth, m0, k0, tid + 768, xAlongK);
            A4 = mul * LoadLeft(x, xRowStride, xColStride, rows, depth, m0, k0, tid + 1024, xAlongK);
            A5 = mul * LoadLeft(x, xRowStride, xColStride, rows, depth, m0, k0, tid + 1280, xAlongK);
            A6 = mul * LoadLeft(x, xRowStride, xColStride, rows, depth, m0, k0, tid + 1536, xAlongK);
            A7 = mul * LoadLeft(x, xRowStride, xColStride, rows, depth, m0, k0, tid + 1792, xAlongK);
            B0 = LoadRight(y, yRowStride, yColStride, depth, cols, n0, k0, tid, yAlongN);
            B1 = LoadRight(y, yRowStride, yColStride, depth, cols, n0, k0, tid + 256, yAlongN);
            B2 = LoadRight(y, yRowStride, yColStride, depth, cols, n0, k0, tid + 512, yAlongN);
            B3 = LoadRight(y, yRowStride, yColStride, depth, cols, n0, k0, tid + 768, yAlongN);
        }

        /// <summary>Writes the registers to sA[k][m] and sB[k][n] in the order they were loaded.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly void Store(ArrayView<float> sA, ArrayView<float> sB, int tid, bool xAlongK, bool yAlongN)
        {
            StoreLeft(sA, tid, xAlongK, A0);
            StoreLeft(sA, tid + 256, xAlongK, A1);
            StoreLeft(sA, tid + 512, xAlongK, A2);
            StoreLeft(sA, tid + 768, xAlongK, A3);
            StoreLeft(sA, tid + 1024, xAlongK, A4);
            StoreLeft(sA, tid + 1280, xAlongK, A5);
            StoreLeft(sA, tid + 1536, xAlongK, A6);
            StoreLeft(sA, tid + 1792, xAlongK, A7);
            StoreRight(sB, tid, yAlongN, B0);
            StoreRight(sB, tid + 256, yAlongN, B1);
            StoreRight(sB, tid + 512, yAlongN, B2);
            StoreRight(sB, tid + 768, yAlongN, B3);
        }
    }

    /// <summary>Element e (0..2047) of the 128 x 16 tile of x [rows, depth] at (m0, k0); 0 outside x (index 0 is read and discarded).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float LoadLeft(ArrayView<float> x, int rowStride, int colStride, int rows, int depth, int m0, int k0, int e, bool alongK)
    {
        int m = m0 + (alongK ? e >> 4 : e & 127);
        int k = k0 + (alongK ? e & 15 : e >> 7);
        bool inside = m < rows && k < depth;
        float value = x[inside ? m * rowStride + k * colStride : 0];
        return inside ? value : 0f;
    }

    /// <summary>Stores element e of the left tile (see <see cref="LoadLeft"/>) at sA[k][m].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreLeft(ArrayView<float> sA, int e, bool alongK, float value)
    {
        int m = alongK ? e >> 4 : e & 127;
        int k = alongK ? e & 15 : e >> 7;
        sA[k * LdA + m] = value;
    }

    /// <summary>Element e (0..1023) of the 16 x 64 tile of y [depth, cols] at (k0, n0); 0 outside y.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float LoadRight(ArrayView<float> y, int rowStride, int colStride, int depth, int cols, int n0, int k0, int e, bool alongN)
    {
        int n = n0 + (alongN ? e & 63 : e >> 4);
        int k = k0 + (alongN ? e >> 6 : e & 15);
        bool inside = n < cols && k < depth;
        float value = y[inside ? k * rowStride + n * colStride : 0];
        return inside ? value : 0f;
    }

    /// <summary>Stores element e of the right tile at sB[k][n].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRight(ArrayView<float> sB, int e, bool alongN, float value)
    {
        int n = alongN ? e & 63 : e >> 4;
        int k = alongN ? e >> 6 : e & 15;
        sB[k * LdB + n] = value;
    }

    /// <summary>acc[i, j] *= mask[row0 + 16 i, col0 + 16 j] (0 outside c, where nothing is stored).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ApplyMask(ref Acc4x4 acc, ArrayView<float> mask, LoraShape p, int row0, int col0)
    {
        acc.C00 *= MaskAt(mask, p, row0, col0); acc.C01 *= MaskAt(mask, p, row0, col0 + 16);
        acc.C02 *= MaskAt(mask, p, row0, col0 + 32); acc.C03 *= MaskAt(mask, p, row0, col0 + 48);
        acc.C10 *= MaskAt(mask, p, row0 + 16, col0); acc.C11 *= MaskAt(mask, p, row0 + 16, col0 + 16);
        acc.C12 *= MaskAt(mask, p, row0 + 16, col0 + 32); acc.C13 *= MaskAt(mask, p, row0 + 16, col0 + 48);
        acc.C20 *= MaskAt(mask, p, row0 + 32, col0); acc.C21 *= MaskAt(mask, p, row0 + 32, col0 + 16);
        acc.C22 *= MaskAt(mask, p, row0 + 32, col0 + 32); acc.C23 *= MaskAt(mask, p, row0 + 32, col0 + 48);
        acc.C30 *= MaskAt(mask, p, row0 + 48, col0); acc.C31 *= MaskAt(mask, p, row0 + 48, col0 + 16);
        acc.C32 *= MaskAt(mask, p, row0 + 48, col0 + 32); acc.C33 *= MaskAt(mask, p, row0 + 48, col0 + 48);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float MaskAt(ArrayView<float> mask, LoraShape p, int row, int col)
    {
        bool inside = row < p.M && col < p.N;
        float value = mask[inside ? row * p.N + col : 0];
        return inside ? value : 0f;
    }

    /// <summary>c[row, col] = value; nothing outside c.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreC(ArrayView<float> c, LoraShape p, int row, int col, float value)
    {
        if (row < p.M && col < p.N) c[row * p.N + col] = value;
    }

    // ---------------------------------------------------------------- host side

    /// <summary>
    /// Launches c = a b + s (u v) (* mask) in f32 on <paramref name="stream"/> without waiting. Throws on any
    /// size or stride the kernels cannot serve, or an operand that does not fit its view, before launching.
    /// </summary>
    public static void Launch(Accelerator accelerator, AcceleratorStream stream, in LoraLinearArgs args, LoraVersion version)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(stream);
        var s = args.Shape;
        Validate(s, args.A.Length, args.B.Length, args.U.Length, args.V.Length, args.Mask.Length, args.C.Length);
        if (s.M == 0 || s.N == 0) return;
        switch (version)
        {
            case LoraVersion.Naive:
            {
                var kernel = KernelCache.Get(accelerator, ("lora1", typeof(float)), static acc =>
                    acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float, ArrayView<float>, LoraShape>(
                        LoraLinearForwardKernel<float>));
                kernel(stream, s.M * s.N, args.A, args.B, args.U, args.V, args.Mask, args.Scale, args.C, s);
                break;
            }
            case LoraVersion.Tiled:
            {
                GemmKernels.RequireGroup(accelerator, Threads, 0, SharedBytes, "tiled lora linear");
                if ((s.M + BM - 1) / BM > 65535)
                    throw new NotSupportedException($"lora linear: {s.M} rows need {(s.M + BM - 1) / BM} row tiles, beyond the grid limit 65535");
                var kernel = KernelCache.Get(accelerator, ("lora2", typeof(float)), static acc =>
                    acc.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float, ArrayView<float>, LoraShape>(
                        LoraLinearForwardKernel2));
                var grid = new Index3D((s.N + BN - 1) / BN, (s.M + BM - 1) / BM, 1);
                kernel(stream, new KernelConfig(grid, new Index3D(Threads, 1, 1)), args.A, args.B, args.U, args.V, args.Mask, args.Scale, args.C, s);
                break;
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(version), version, "lora linear: unknown version");
        }
    }

    /// <summary>
    /// Throws unless every size and stride is non-negative and the largest index of each operand (lengths in
    /// elements) lies inside its view; a (K > 0), b (K > 0), u and v (R > 0) are only checked when read.
    /// </summary>
    public static void Validate(LoraShape s, long aLength, long bLength, long uLength, long vLength, long maskLength, long cLength)
    {
        if (s.M < 0 || s.N < 0 || s.K < 0 || s.R < 0)
            throw new ArgumentOutOfRangeException(nameof(s), $"lora linear: negative size M={s.M} N={s.N} K={s.K} R={s.R}");
        if (s.ARowStride < 0 || s.AColStride < 0 || s.BRowStride < 0 || s.BColStride < 0
            || s.URowStride < 0 || s.UColStride < 0 || s.VRowStride < 0 || s.VColStride < 0)
            throw new ArgumentOutOfRangeException(nameof(s), "lora linear: negative stride");
        if (s.M == 0 || s.N == 0) return;
        if ((long)s.M * s.N > int.MaxValue) throw new NotSupportedException($"lora linear: {s.M} x {s.N} outputs exceed int indexing");
        CheckOperand("c", s.M, s.N, s.N, 1, cLength);
        if (s.HasMask != 0) CheckOperand("mask", s.M, s.N, s.N, 1, maskLength);
        if (s.K > 0)
        {
            CheckOperand("a", s.M, s.K, s.ARowStride, s.AColStride, aLength);
            CheckOperand("b", s.K, s.N, s.BRowStride, s.BColStride, bLength);
        }
        if (s.R > 0)
        {
            CheckOperand("u", s.M, s.R, s.URowStride, s.UColStride, uLength);
            CheckOperand("v", s.R, s.N, s.VRowStride, s.VColStride, vLength);
        }
    }

    private static void CheckOperand(string name, int rows, int cols, int rowStride, int colStride, long length)
    {
        long last = (long)(rows - 1) * rowStride + (long)(cols - 1) * colStride;
        if (last >= length)
            throw new ArgumentOutOfRangeException(name, $"lora linear: {name} ({rows} x {cols}, strides {rowStride}, {colStride}) reaches index {last} of a view of {length}");
        if (last > int.MaxValue)
            throw new NotSupportedException($"lora linear: {name} reaches index {last}, beyond int indexing");
    }

    // ---------------------------------------------------------------- CPU reference

    /// <summary>The definition in f64 over dense host arrays laid out by <paramref name="s"/>: c = a b + scale (u v) (* mask).</summary>
    public static void Reference(LoraShape s, double scale, double[] a, double[] b, double[] u, double[] v, double[]? mask, double[] c)
    {
        for (int i = 0; i < s.M; i++)
            for (int j = 0; j < s.N; j++)
            {
                double main = 0, low = 0;
                for (int k = 0; k < s.K; k++) main += a[i * s.ARowStride + k * s.AColStride] * b[k * s.BRowStride + j * s.BColStride];
                for (int k = 0; k < s.R; k++) low += u[i * s.URowStride + k * s.UColStride] * v[k * s.VRowStride + j * s.VColStride];
                low *= scale;
                if (s.HasMask != 0) low *= mask![i * s.N + j];
                c[i * s.N + j] = main + low;
            }
    }
}
