// Fused matmul and mat-vec with llama.cpp's Q8_0, Q4_K and Q6_K weights on ILGPU:
//
//     y [M, N] = x [M, K] @ dequantize(w)^T,   w: N rows of K / BlockSize blocks (bytes)
//
// serving IBackend.MatMulQuantized for those formats (CPU definition CpuBackend.Quantized.cs; naive reference
// Ops/Reference/MatMulQuantizedRef.cs; layouts src/TinyLlama.Core/Quantization/QuantType.cs). The three
// versions follow MatMulQ4.cs's (Q4Version; the backend picks them with MatMulQ4Kernels.Choose), with the
// weights decoded four at a time by the format's IBlockFormat.Decode4 (DequantizeBlocks.cs) where they are
// multiplied: no kernel writes the expanded weights to memory. One generic kernel per version serves all
// three formats (a format is an empty struct, so each instantiation compiles to straight-line decode code).
// x and y are dense row-major; K is a multiple of the block size (32 or 256).
//
//   1  MatMulBlocksForwardKernel1: one thread per output (m, n), f32 or f64; it walks row n four weights at a
//      time. The plain path: f64, accelerators without 32-lane warps (the 4-lane CPU accelerator), tests.
//   2  MatMulBlocksForwardKernel2 (f32, mat-vec, M <= 4): one warp per (row n of w, row m of x), 8 rows per
//      256-thread group. Lane l decodes weights 4l .. 4l + 3 of each 128-weight step, so a warp step reads a
//      contiguous run of the row: 4 Q8_0 blocks (136 bytes), or half a Q4_K super-block (64 bytes of nibbles,
//      each byte read by two lanes, one per nibble) or half a Q6_K super-block (64 + 32 bytes); the scales
//      are re-read per 4 weights from cache. Lanes meet through 5 xor-shuffles. Traffic: w once per row of x
//      (1.0625 / 0.5625 / 0.82 bytes per weight), x from cache.
//   3  MatMulBlocksForwardKernel3 (f32, M > 4): the tiled GEMM of GemmTiled.cs (a 128 x 64 tile of y per group
//      of 256 threads, 8 x 4 accumulators per thread, K in steps of 16, the next step fetched into registers
//      while the current one is multiplied) with the b tile decoded from w: thread t decodes weights
//      k0 + 4 (t % 4) .. + 3 of column n0 + t / 4 during the fetch and stores them to sB[k][n].
//      Traffic: w is read M / 128 times, x N / 64 times, y written once. Shared memory 12.5 KiB per group.
// Not done: an integer (Q8_1-activation, dp4a) path for these formats, as IntegerDotQ4.cs does for Q4_0.
//
// Validation: the host checks the sizes against the views' lengths before a launch. Edges: out-of-range rows
// of x load as 0, out-of-range columns of w are not decoded (their b-tile entries are 0), and out-of-range
// outputs are not stored.
using System.Numerics;
using ILGPU;
using ILGPU.Runtime;

namespace TinyLlama.Kernels;

/// <summary>One product y [M, N] = x [M, K] @ dequantize(w)^T in f32 for <see cref="MatMulBlocksKernels.Launch{TFormat}"/>.</summary>
internal readonly record struct MatMulBlocksArgs(Q4Shape Shape, ArrayView<float> X, ArrayView<byte> W, ArrayView<float> Y);

/// <summary>Fused kernels for block-quantized weights other than Q4_0, and their host-side launcher.</summary>
internal static class MatMulBlocksKernels
{
    private const int BM = GemmKernels.TiledBM, BN = GemmKernels.TiledBN, BK = GemmKernels.TiledBK;
    private const int Threads = GemmKernels.TiledThreads;
    private const int LdB = GemmKernels.TiledLdB;
    private const int RowsPerGroup = Threads / 32;

    /// <summary>Byte offset of row n of w [N, K] in format f.</summary>
    private static int RowStart<TFormat>(TFormat f, int n, int k) where TFormat : struct, IBlockFormat => n * (k / f.BlockSize) * f.BlockBytes;

    // ---------------------------------------------------------------- version 1

    /// <summary>Version 1: output i = m N + n, one thread each.</summary>
    internal static void MatMulBlocksForwardKernel1<TFormat, T, E>(Index1D i, ArrayView<T> x, ArrayView<byte> w, ArrayView<T> y, Q4Shape s)
        where TFormat : struct, IBlockFormat where T : unmanaged, IFloatingPointIeee754<T> where E : struct, IElement<T>
    {
        TFormat f = default;
        E el = default;
        int m = i / s.N, n = i - m * s.N;
        int row = RowStart(f, n, s.K), xb = m * s.K;
        T acc = T.Zero;
        for (int e = 0; e < s.K; e += 4)
        {
            f.Decode4(w, row, e, out float v0, out float v1, out float v2, out float v3);
            acc += el.FromDouble(v0) * x[xb + e] + el.FromDouble(v1) * x[xb + e + 1]
                 + el.FromDouble(v2) * x[xb + e + 2] + el.FromDouble(v3) * x[xb + e + 3];
        }
        y[i] = acc;
    }

    // ---------------------------------------------------------------- version 2

    /// <summary>Version 2: warp Group.IdxX / 32 of group Grid.IdxX computes y[Grid.IdxY, 8 Grid.IdxX + warp].</summary>
    internal static void MatMulBlocksForwardKernel2<TFormat>(ArrayView<float> x, ArrayView<byte> w, ArrayView<float> y, Q4Shape s)
        where TFormat : struct, IBlockFormat
    {
        TFormat f = default;
        int lane = Group.IdxX & 31;
        int n = Grid.IdxX * RowsPerGroup + (Group.IdxX >> 5);
        int m = Grid.IdxY;
        if (n >= s.N) return;                      // the whole warp leaves together
        int row = RowStart(f, n, s.K), xb = m * s.K;
        float sum = 0;
        for (int e = lane << 2; e < s.K; e += 128)  // lanes past the end of K skip the last step
        {
            f.Decode4(w, row, e, out float v0, out float v1, out float v2, out float v3);
            sum += v0 * x[xb + e] + v1 * x[xb + e + 1] + v2 * x[xb + e + 2] + v3 * x[xb + e + 3];
        }
        for (int lanes = 16; lanes > 0; lanes >>= 1) sum += Warp.ShuffleXor(sum, lanes);
        if (lane == 0) y[m * s.N + n] = sum;
    }

    // ---------------------------------------------------------------- version 3

    /// <summary>Version 3: the 128 x 64 tile (Grid.IdxY, Grid.IdxX) of y, with p describing x [M, K] and y [M, N].</summary>
    internal static void MatMulBlocksForwardKernel3<TFormat>(ArrayView<float> x, ArrayView<byte> w, ArrayView<float> y, GemmParams p)
        where TFormat : struct, IBlockFormat
    {
        TFormat f = default;
        var sA = SharedMemory.Allocate<float>(BK * GemmKernels.TiledLdA);   // sA is (BK, BM): x, k-major
        var sB = SharedMemory.Allocate<float>(BK * LdB);                    // sB is (BK, BN): decoded weights
        int tid = Group.IdxX;
        int tx = tid & 15, ty = tid >> 4;
        int m0 = Grid.IdxY * BM, n0 = Grid.IdxX * BN;
        int steps = p.K >> 4;
        // This thread's share of the b tile: weights 4q .. 4q + 3 of each step in column n0 + tid / 4.
        int col = n0 + (tid >> 2), q = tid & 3;
        bool colInside = col < p.N;
        int row = colInside ? RowStart(f, col, p.K) : 0;
        Acc4x4 top = default;      // rows ty + 16 i, i < 4
        Acc4x4 bottom = default;   // rows ty + 64 + 16 i
        // The step in flight: 8 elements of the x tile and 4 decoded weights.
        float ra0 = 0, ra1 = 0, ra2 = 0, ra3 = 0, ra4 = 0, ra5 = 0, ra6 = 0, ra7 = 0;
        float rb0 = 0, rb1 = 0, rb2 = 0, rb3 = 0;
        if (steps > 0)
        {
            MatMulQ4Kernels.LoadA(x, p, m0, 0, tid, ref ra0, ref ra1, ref ra2, ref ra3, ref ra4, ref ra5, ref ra6, ref ra7);
            if (colInside) f.Decode4(w, row, q << 2, out rb0, out rb1, out rb2, out rb3);
        }
        int nl = tid >> 2, kq = q << 2;
        for (int t = 0; t < steps; t++)
        {
            MatMulQ4Kernels.StoreA(sA, tid, ra0, ra1, ra2, ra3, ra4, ra5, ra6, ra7);
            sB[kq * LdB + nl] = rb0;
            sB[(kq + 1) * LdB + nl] = rb1;
            sB[(kq + 2) * LdB + nl] = rb2;
            sB[(kq + 3) * LdB + nl] = rb3;
            Group.Barrier();

            if (t + 1 < steps)
            {
                MatMulQ4Kernels.LoadA(x, p, m0, (t + 1) * BK, tid, ref ra0, ref ra1, ref ra2, ref ra3, ref ra4, ref ra5, ref ra6, ref ra7);
                if (colInside) f.Decode4(w, row, (t + 1) * BK + kq, out rb0, out rb1, out rb2, out rb3);
            }

            MatMulQ4Kernels.MultiplyTiles(sA, sB, tx, ty, ref top, ref bottom);
            Group.Barrier();
        }

        MatMulQ4Kernels.StoreY(y, p, m0, n0, tx, ty, top, bottom);
    }

    // ---------------------------------------------------------------- host side

    /// <summary>Throws unless y [M, N] = x [M, K] @ dequantize(w)^T in format f fits views of these lengths (w in bytes).</summary>
    internal static void Validate<TFormat>(Q4Shape s, long xLength, long wBytes, long yLength) where TFormat : struct, IBlockFormat
    {
        TFormat f = default;
        string name = Name<TFormat>();
        if (s.M < 0 || s.N < 0 || s.K <= 0 || s.K % f.BlockSize != 0)
            throw new ArgumentOutOfRangeException(nameof(s), $"matmul {name}: M={s.M} N={s.N} K={s.K} (K must be a positive multiple of {f.BlockSize})");
        long bytes = (long)s.N * (s.K / f.BlockSize) * f.BlockBytes;
        if ((long)s.M * s.K > xLength) throw new ArgumentException($"matmul {name}: x needs {(long)s.M * s.K} elements, its view has {xLength}");
        if (bytes > wBytes) throw new ArgumentException($"matmul {name}: w needs {bytes} bytes, its view has {wBytes}");
        if ((long)s.M * s.N > yLength) throw new ArgumentException($"matmul {name}: y needs {(long)s.M * s.N} elements, its view has {yLength}");
        if (bytes > int.MaxValue || (long)s.M * s.K > int.MaxValue || (long)s.M * s.N > int.MaxValue)
            throw new NotSupportedException($"matmul {name}: M={s.M} N={s.N} K={s.K} exceed int indexing");
    }

    /// <summary>The format's name for messages (q8_0, q4_k, q6_k).</summary>
    private static string Name<TFormat>() => typeof(TFormat).Name.Replace("Format", "").ToLowerInvariant();

    /// <summary>
    /// Launches y = x @ dequantize(w)^T in f32 on <paramref name="stream"/> without waiting. Throws on any size
    /// the kernels cannot serve, or an operand that does not fit its view, before launching.
    /// </summary>
    internal static void Launch<TFormat>(Accelerator accelerator, AcceleratorStream stream, in MatMulBlocksArgs args, Q4Version version)
        where TFormat : struct, IBlockFormat
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(stream);
        var s = args.Shape;
        Validate<TFormat>(s, args.X.Length, args.W.Length, args.Y.Length);
        if (s.M == 0 || s.N == 0) return;
        switch (version)
        {
            case Q4Version.Naive:
            {
                var kernel = KernelCache.Get(accelerator, ("blocks-1", typeof(TFormat)), static acc =>
                    acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<byte>, ArrayView<float>, Q4Shape>(MatMulBlocksForwardKernel1<TFormat, float, F32>));
                kernel(stream, s.M * s.N, args.X, args.W, args.Y, s);
                break;
            }
            case Q4Version.MatVec:
            {
                GemmKernels.RequireGroup(accelerator, Threads, KernelsInfo.WarpSize, 0, "block mat-vec");
                if (s.M > 65535) throw new NotSupportedException($"matmul {Name<TFormat>()}: the mat-vec kernel serves at most 65535 rows of x, got {s.M}");
                var kernel = KernelCache.Get(accelerator, ("blocks-2", typeof(TFormat)), static acc =>
                    acc.LoadKernel<ArrayView<float>, ArrayView<byte>, ArrayView<float>, Q4Shape>(MatMulBlocksForwardKernel2<TFormat>));
                var grid = new Index3D((s.N + RowsPerGroup - 1) / RowsPerGroup, s.M, 1);
                kernel(stream, new KernelConfig(grid, new Index3D(Threads, 1, 1)), args.X, args.W, args.Y, s);
                break;
            }
            case Q4Version.Tiled:
            {
                GemmKernels.RequireGroup(accelerator, Threads, 0, GemmKernels.TiledSharedBytes, "tiled block matmul");
                if ((s.M + BM - 1) / BM > 65535)
                    throw new NotSupportedException($"matmul {Name<TFormat>()}: {s.M} rows need {(s.M + BM - 1) / BM} row tiles, beyond the grid limit 65535");
                var p = new GemmParams
                {
                    M = s.M, N = s.N, K = s.K, Batch0 = 1, Batch1 = 1,
                    ARowStride = s.K, AColStride = 1, CRowStride = s.N, CColStride = 1,
                };
                var kernel = KernelCache.Get(accelerator, ("blocks-3", typeof(TFormat)), static acc =>
                    acc.LoadKernel<ArrayView<float>, ArrayView<byte>, ArrayView<float>, GemmParams>(MatMulBlocksForwardKernel3<TFormat>));
                var grid = new Index3D((s.N + BN - 1) / BN, (s.M + BM - 1) / BM, 1);
                kernel(stream, new KernelConfig(grid, new Index3D(Threads, 1, 1)), args.X, args.W, args.Y, p);
                break;
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(version), $"matmul {Name<TFormat>()}: unknown version {(int)version}");
        }
    }
}
