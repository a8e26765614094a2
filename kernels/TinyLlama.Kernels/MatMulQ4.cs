// Int4 matmul and mat-vec with llama.cpp's Q4_0 weights on ILGPU:
//
//     y [M, N] = x [M, K] @ dequantize(w)^T,   w: N rows of K / 32 blocks of 18 bytes
//
// serving IBackend.MatMulQuantized for Q4_0 (CPU definition CpuBackend.Quantized.cs; naive reference
// Ops/Reference/MatMulQuantizedRef.cs; block layout src/TinyLlama.Core/Quantization/QuantType.cs). A block is read
// as 9 little-endian 16-bit words: word 0 is the binary16 scale d, word 1 + l holds qs[2l] (low byte) and
// qs[2l + 1] (high byte), and byte j holds weight j in its low nibble and weight j + 16 in its high nibble,
// weight = (nibble - 8) d. Reading words keeps every load aligned. No kernel writes the expanded weights to
// memory: each weight is decoded in registers (or, in version 3, on its way into shared memory) where it is
// multiplied. x and y are dense row-major; K is a multiple of 32.
//
// Versions (Q4Version; IlgpuBackend.Quantized.cs picks 2 for M <= 4 and 3 otherwise, in f32 on accelerators
// with 32-lane warps and 256-thread groups, and 1 elsewhere):
//   1  MatMulQ4ForwardKernel1: one thread per output (m, n), f32 or f64. It walks row n's blocks, decodes
//      each and dots it with row m of x. Traffic per output: row n of w (0.5625 bytes per weight) and row m
//      of x. The plain path: f64, the CPU accelerator, tests.
//   2  MatMulQ4ForwardKernel2 (f32, mat-vec): one warp per (row n of w, row m of x), 8 rows per 256-thread
//      group. Eight lanes share a block: lane l of the eight decodes word 1 + l, i.e. weights 2l, 2l + 1 (low
//      nibbles) and 2l + 16, 2l + 17 (high nibbles), so the warp covers 4 blocks = 128 weights per step and its
//      loads of w are 4 runs of 16 consecutive bytes plus 4 scales (broadcast to the eight lanes). The lanes'
//      partial sums meet through 5 xor-shuffles. Traffic: w once per row of x (M <= 4 here), x from cache:
//      bound by w's 0.5625 bytes per weight, 7.1x less than an f32 mat-vec reads.
//   3  MatMulQ4ForwardKernel3 (f32, M > 4): the tiled GEMM of GemmTiled.cs (a 128 x 64 tile of y per group
//      of 256 threads, an 8 x 4 block of accumulators per thread, K in steps of 16, the next tile fetched into
//      registers while the current one is multiplied) with the b tile decoded from w. A step of 16 covers
//      the low nibbles (even step) or the high nibbles (odd step) of one block per column, so thread t
//      fetches the scale and words 1 + 2 (t % 4) and 2 + 2 (t % 4) of column n0 + t / 4 on even steps only
//      (4 weights per step, each of the two steps) and decodes them when storing to sB[k][n].
//      Traffic: w is read M / 128 times (0.5625 bytes per weight each time), x N / 64 times, y written once.
//      Shared memory: (16 x 132 + 16 x 68) x 4 B = 12.5 KiB per group, as the GEMM. Its tile steps (LoadA,
//      StoreA, MultiplyTiles, StoreY) also serve the other formats' tiled kernel (MatMulBlocks.cs).
//
// Validation: the host checks the sizes against the views' lengths before a launch (an out-of-range index
// on the CPU accelerator takes the process down). Edges: out-of-range rows of x load as 0, out-of-range
// columns of w decode with d = 0 (reading word 0, always valid), and out-of-range outputs are not stored.
using System.Numerics;
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;

namespace TinyLlama.Kernels;

/// <summary>Which int4 kernel runs (see the header of MatMulQ4.cs).</summary>
public enum Q4Version
{
    /// <summary>Version 1: one thread per output, f32 or f64.</summary>
    Naive = 1,
    /// <summary>Version 2: one warp per output, 8 lanes per block (f32; made for M &lt;= 4).</summary>
    MatVec = 2,
    /// <summary>Version 3: 128 x 64 shared-memory tiles with the weights decoded into the tile (f32).</summary>
    Tiled = 3,
}

/// <summary>Sizes of y [M, N] = x [M, K] @ dequantize(w)^T (K a multiple of 32).</summary>
public struct Q4Shape
{
    public int M, N, K;

    /// <summary>Blocks per row of w.</summary>
    public readonly int Blocks => K >> 5;
}

/// <summary>One int4 product in f32 for <see cref="MatMulQ4Kernels.Launch"/>; w is the blocks as 16-bit words.</summary>
public readonly record struct MatMulQ4Args(Q4Shape Shape, ArrayView<float> X, ArrayView<ushort> W, ArrayView<float> Y);

/// <summary>Int4 (Q4_0) kernels and their host-side launcher.</summary>
public static class MatMulQ4Kernels
{
    /// <summary>16-bit words per Q4_0 block.</summary>
    public const int BlockWords = 9;

    /// <summary>Largest M the mat-vec version serves.</summary>
    public const int MatVecMaxRows = 4;

    private const int BM = GemmKernels.TiledBM, BN = GemmKernels.TiledBN, BK = GemmKernels.TiledBK;
    private const int Threads = GemmKernels.TiledThreads;
    private const int LdB = GemmKernels.TiledLdB;
    private const int RowsPerGroup = Threads / 32;

    // ---------------------------------------------------------------- version 1

    /// <summary>Version 1: output i = m N + n, one thread each.</summary>
    public static void MatMulQ4ForwardKernel1<T, E>(Index1D i, ArrayView<T> x, ArrayView<ushort> w, ArrayView<T> y, Q4Shape s)
        where T : unmanaged, IFloatingPointIeee754<T> where E : struct, IElement<T>
    {
        E e = default;
        int m = i / s.N, n = i - m * s.N;
        int blocks = s.Blocks;
        T acc = T.Zero;
        for (int b = 0; b < blocks; b++)
        {
            int word = (n * blocks + b) * BlockWords;
            int xb = m * s.K + b * 32;
            T sum = T.Zero;
            for (int l = 0; l < 8; l++)
            {
                int pair = w[word + 1 + l];
                sum += e.FromDouble((pair & 0xF) - 8) * x[xb + 2 * l]
                     + e.FromDouble(((pair >> 8) & 0xF) - 8) * x[xb + 2 * l + 1]
                     + e.FromDouble(((pair >> 4) & 0xF) - 8) * x[xb + 2 * l + 16]
                     + e.FromDouble((pair >> 12) - 8) * x[xb + 2 * l + 17];
            }
            acc += e.FromDouble(HalfBits.ToSingle(w[word])) * sum;
        }
        y[i] = acc;
    }

    // ---------------------------------------------------------------- version 2

    /// <summary>Version 2: warp Group.IdxX / 32 of group Grid.IdxX computes y[Grid.IdxY, 8 Grid.IdxX + warp].</summary>
    internal static void MatMulQ4ForwardKernel2(ArrayView<float> x, ArrayView<ushort> w, ArrayView<float> y, Q4Shape s)
    {
        int lane = Group.IdxX & 31;
        int n = Grid.IdxX * RowsPerGroup + (Group.IdxX >> 5);
        int m = Grid.IdxY;
        if (n >= s.N) return;                      // the whole warp leaves together
        int blocks = s.Blocks;
        int l = lane & 7;                          // word 1 + l of the block
        float sum = 0;
        for (int b = lane >> 3; b < blocks; b += 4)
        {
            int word = (n * blocks + b) * BlockWords;
            int pair = w[word + 1 + l];
            int xb = m * s.K + b * 32 + 2 * l;
            float part = ((pair & 0xF) - 8) * x[xb]
                       + (((pair >> 8) & 0xF) - 8) * x[xb + 1]
                       + (((pair >> 4) & 0xF) - 8) * x[xb + 16]
                       + ((pair >> 12) - 8) * x[xb + 17];
            sum += HalfBits.ToSingle(w[word]) * part;
        }
        for (int lanes = 16; lanes > 0; lanes >>= 1) sum += Warp.ShuffleXor(sum, lanes);
        if (lane == 0) y[m * s.N + n] = sum;
    }

    // ---------------------------------------------------------------- version 3

    /// <summary>Version 3: the 128 x 64 tile (Grid.IdxY, Grid.IdxX) of y, with p describing x [M, K] and y [M, N].</summary>
    internal static void MatMulQ4ForwardKernel3(ArrayView<float> x, ArrayView<ushort> w, ArrayView<float> y, GemmParams p)
    {
        var sA = SharedMemory.Allocate<float>(BK * GemmKernels.TiledLdA);   // sA is (BK, BM): x, k-major
        var sB = SharedMemory.Allocate<float>(BK * LdB);                    // sB is (BK, BN): decoded weights
        int tid = Group.IdxX;
        int tx = tid & 15, ty = tid >> 4;
        int m0 = Grid.IdxY * BM, n0 = Grid.IdxX * BN;
        int blocks = p.K >> 5, steps = p.K >> 4;
        // This thread's share of the b tile: 4 weights of column n0 + tid / 4, from words 1 + 2q and 2 + 2q.
        int col = n0 + (tid >> 2), q = tid & 3;
        bool colInside = col < p.N;
        Acc4x4 top = default;      // rows ty + 16 i, i < 4
        Acc4x4 bottom = default;   // rows ty + 64 + 16 i
        // The step in flight: 8 elements of the x tile, the block's scale and two words of its column.
        float ra0 = 0, ra1 = 0, ra2 = 0, ra3 = 0, ra4 = 0, ra5 = 0, ra6 = 0, ra7 = 0;
        float d = 0;
        int pair0 = 0, pair1 = 0;
        if (steps > 0)
        {
            LoadA(x, p, m0, 0, tid, ref ra0, ref ra1, ref ra2, ref ra3, ref ra4, ref ra5, ref ra6, ref ra7);
            LoadBlockWords(w, col, colInside, blocks, 0, q, ref d, ref pair0, ref pair1);
        }
        for (int t = 0; t < steps; t++)
        {
            StoreA(sA, tid, ra0, ra1, ra2, ra3, ra4, ra5, ra6, ra7);
            // Even steps take the low nibbles (weights 0..15 of the block), odd steps the high ones.
            int shift = (t & 1) << 2;
            int nl = tid >> 2, k = q << 2;
            sB[k * LdB + nl] = (((pair0 >> shift) & 0xF) - 8) * d;
            sB[(k + 1) * LdB + nl] = (((pair0 >> (8 + shift)) & 0xF) - 8) * d;
            sB[(k + 2) * LdB + nl] = (((pair1 >> shift) & 0xF) - 8) * d;
            sB[(k + 3) * LdB + nl] = (((pair1 >> (8 + shift)) & 0xF) - 8) * d;
            Group.Barrier();

            if (t + 1 < steps)
            {
                LoadA(x, p, m0, (t + 1) * BK, tid, ref ra0, ref ra1, ref ra2, ref ra3, ref ra4, ref ra5, ref ra6, ref ra7);
                if ((t & 1) == 1) LoadBlockWords(w, col, colInside, blocks, (t + 1) >> 1, q, ref d, ref pair0, ref pair1);
            }

            MultiplyTiles(sA, sB, tx, ty, ref top, ref bottom);
            Group.Barrier();
        }

        StoreY(y, p, m0, n0, tx, ty, top, bottom);
    }

    /// <summary>This thread's 8 elements of the 128 x 16 tile of x at (m0, k0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void LoadA(ArrayView<float> x, GemmParams p, int m0, int k0, int tid,
                              ref float a0, ref float a1, ref float a2, ref float a3, ref float a4, ref float a5, ref float a6, ref float a7)
    {
        a0 = GemmKernels.LoadTileA<float, F32Element>(x, p, 0, m0, k0, tid, true);
        a1 = GemmKernels.LoadTileA<float, F32Element>(x, p, 0, m0, k0, tid + 256, true);
        a2 = GemmKernels.LoadTileA<float, F32Element>(x, p, 0, m0, k0, tid + 512, true);
        a3 = GemmKernels.LoadTileA<float, F32Element>(x, p, 0, m0, k0, tid + 768, true);
        a4 = GemmKernels.LoadTileA<float, F32Element>(x, p, 0, m0, k0, tid + 1024, true);
        a5 = GemmKernels.LoadTileA<float, F32Element>(x, p, 0, m0, k0, tid + 1280, true);
        a6 = GemmKernels.LoadTileA<float, F32Element>(x, p, 0, m0, k0, tid + 1536, true);
        a7 = GemmKernels.LoadTileA<float, F32Element>(x, p, 0, m0, k0, tid + 1792, true);
    }

    /// <summary>Stores this thread's 8 elements of the x tile (see <see cref="LoadA"/>) to sA[k][m].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void StoreA(ArrayView<float> sA, int tid, float a0, float a1, float a2, float a3, float a4, float a5, float a6, float a7)
    {
        GemmKernels.StoreTileA(sA, tid, true, a0);
        GemmKernels.StoreTileA(sA, tid + 256, true, a1);
        GemmKernels.StoreTileA(sA, tid + 512, true, a2);
        GemmKernels.StoreTileA(sA, tid + 768, true, a3);
        GemmKernels.StoreTileA(sA, tid + 1024, true, a4);
        GemmKernels.StoreTileA(sA, tid + 1280, true, a5);
        GemmKernels.StoreTileA(sA, tid + 1536, true, a6);
        GemmKernels.StoreTileA(sA, tid + 1792, true, a7);
    }

    /// <summary>This thread's 8 x 4 accumulators += the 16-deep product of the tiles in shared memory.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void MultiplyTiles(ArrayView<float> sA, ArrayView<float> sB, int tx, int ty, ref Acc4x4 top, ref Acc4x4 bottom)
    {
        for (int kk = 0; kk < BK; kk++)
        {
            int ia = kk * GemmKernels.TiledLdA + ty;
            int ib = kk * LdB + tx;
            float b0 = sB[ib], b1 = sB[ib + 16], b2 = sB[ib + 32], b3 = sB[ib + 48];
            top.Fma(sA[ia], sA[ia + 16], sA[ia + 32], sA[ia + 48], b0, b1, b2, b3);
            bottom.Fma(sA[ia + 64], sA[ia + 80], sA[ia + 96], sA[ia + 112], b0, b1, b2, b3);
        }
    }

    /// <summary>Stores this thread's accumulators of the 128 x 64 tile at (m0, n0) to y; nothing outside y.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void StoreY(ArrayView<float> y, GemmParams p, int m0, int n0, int tx, int ty, Acc4x4 top, Acc4x4 bottom)
    {
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
            {
                GemmKernels.StoreC<float, F32Element>(y, p, 0, m0 + ty + 16 * i, n0 + tx + 16 * j, top.Get(i, j));
                GemmKernels.StoreC<float, F32Element>(y, p, 0, m0 + ty + 64 + 16 * i, n0 + tx + 16 * j, bottom.Get(i, j));
            }
    }

    /// <summary>The scale and words 1 + 2q, 2 + 2q of block b of row col of w; d = 0 outside w.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void LoadBlockWords(ArrayView<ushort> w, int col, bool inside, int blocks, int b, int q, ref float d, ref int pair0, ref int pair1)
    {
        int word = inside ? (col * blocks + b) * BlockWords : 0;
        float scale = HalfBits.ToSingle(w[word]);
        d = inside ? scale : 0f;
        pair0 = w[word + 1 + 2 * q];
        pair1 = w[word + 2 + 2 * q];
    }

    // ---------------------------------------------------------------- dequantize

    /// <summary>y[i] (i = n K + k) = weight k of row n of w.</summary>
    public static void DequantizeQ4Kernel<T, E>(Index1D i, ArrayView<ushort> w, ArrayView<T> y, Q4Shape s)
        where T : unmanaged where E : struct, IElement<T>
    {
        int n = i / s.K, k = i - n * s.K;
        int word = (n * s.Blocks + (k >> 5)) * BlockWords;
        int j = k & 31;                                   // position in the block
        int pair = w[word + 1 + ((j & 15) >> 1)];
        int shift = ((j & 1) << 3) + (j >> 4 << 2);       // high byte for odd j, high nibble for j >= 16
        y[i] = default(E).FromDouble((((pair >> shift) & 0xF) - 8) * (double)HalfBits.ToSingle(w[word]));
    }

    // ---------------------------------------------------------------- host side

    /// <summary>The version the backend runs for M rows of x in f32 on an accelerator with (or without) 32-lane warps and 256-thread groups.</summary>
    public static Q4Version Choose(int m, bool tiledDevice) =>
        !tiledDevice ? Q4Version.Naive : m <= MatVecMaxRows ? Q4Version.MatVec : Q4Version.Tiled;

    /// <summary>Throws unless y [M, N] = x [M, K] @ dequantize(w)^T fits views of these lengths (w in 16-bit words).</summary>
    public static void Validate(Q4Shape s, long xLength, long wWords, long yLength)
    {
        if (s.M < 0 || s.N < 0 || s.K <= 0 || s.K % 32 != 0)
            throw new ArgumentOutOfRangeException(nameof(s), $"matmul q4: M={s.M} N={s.N} K={s.K} (K must be a positive multiple of 32)");
        if ((long)s.M * s.K > xLength) throw new ArgumentException($"matmul q4: x needs {(long)s.M * s.K} elements, its view has {xLength}");
        if ((long)s.N * s.Blocks * BlockWords > wWords) throw new ArgumentException($"matmul q4: w needs {(long)s.N * s.Blocks * BlockWords} words, its view has {wWords}");
        if ((long)s.M * s.N > yLength) throw new ArgumentException($"matmul q4: y needs {(long)s.M * s.N} elements, its view has {yLength}");
        if ((long)s.N * s.Blocks * BlockWords > int.MaxValue || (long)s.M * s.K > int.MaxValue || (long)s.M * s.N > int.MaxValue || (long)s.N * s.K > int.MaxValue)
            throw new NotSupportedException($"matmul q4: M={s.M} N={s.N} K={s.K} exceed int indexing");
    }

    /// <summary>
    /// Launches y = x @ dequantize(w)^T in f32 on <paramref name="stream"/> without waiting. Throws on any size
    /// the kernels cannot serve, or an operand that does not fit its view, before launching.
    /// </summary>
    public static void Launch(Accelerator accelerator, AcceleratorStream stream, in MatMulQ4Args args, Q4Version version)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(stream);
        var s = args.Shape;
        Validate(s, args.X.Length, args.W.Length, args.Y.Length);
        if (s.M == 0 || s.N == 0) return;
        switch (version)
        {
            case Q4Version.Naive:
            {
                var kernel = KernelCache.Get(accelerator, ("q4-1", typeof(float)), static acc =>
                    acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<ushort>, ArrayView<float>, Q4Shape>(MatMulQ4ForwardKernel1<float, F32>));
                kernel(stream, s.M * s.N, args.X, args.W, args.Y, s);
                break;
            }
            case Q4Version.MatVec:
            {
                GemmKernels.RequireGroup(accelerator, Threads, KernelsInfo.WarpSize, 0, "q4 mat-vec");
                if (s.M > 65535) throw new NotSupportedException($"matmul q4: the mat-vec kernel serves at most 65535 rows of x, got {s.M}");
                var kernel = KernelCache.Get(accelerator, ("q4-2", typeof(float)), static acc =>
                    acc.LoadKernel<ArrayView<float>, ArrayView<ushort>, ArrayView<float>, Q4Shape>(MatMulQ4ForwardKernel2));
                var grid = new Index3D((s.N + RowsPerGroup - 1) / RowsPerGroup, s.M, 1);
                kernel(stream, new KernelConfig(grid, new Index3D(Threads, 1, 1)), args.X, args.W, args.Y, s);
                break;
            }
            case Q4Version.Tiled:
            {
                GemmKernels.RequireGroup(accelerator, Threads, 0, GemmKernels.TiledSharedBytes, "tiled q4 matmul");
                if ((s.M + BM - 1) / BM > 65535)
                    throw new NotSupportedException($"matmul q4: {s.M} rows need {(s.M + BM - 1) / BM} row tiles, beyond the grid limit 65535");
                var p = new GemmParams
                {
                    M = s.M, N = s.N, K = s.K, Batch0 = 1, Batch1 = 1,
                    ARowStride = s.K, AColStride = 1, CRowStride = s.N, CColStride = 1,
                };
                var kernel = KernelCache.Get(accelerator, ("q4-3", typeof(float)), static acc =>
                    acc.LoadKernel<ArrayView<float>, ArrayView<ushort>, ArrayView<float>, GemmParams>(MatMulQ4ForwardKernel3));
                var grid = new Index3D((s.N + BN - 1) / BN, (s.M + BM - 1) / BM, 1);
                kernel(stream, new KernelConfig(grid, new Index3D(Threads, 1, 1)), args.X, args.W, args.Y, p);
                break;
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(version), $"matmul q4: unknown version {(int)version}");
        }
    }
}
