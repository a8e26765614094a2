// The integer decode path for Q4_0 weights on ILGPU, as llama.cpp's CUDA mat-vec does it (mmvq: activations
// quantized to 8 bits, weights and activations multiplied in int8 with dp4a, one scale multiply per block):
//
//     xq = quantize_q8_0(x [M, K]);   y [M, N] = sum over blocks b of ((float)sumi_b * d_w) * d_x
//     sumi_b = sum_j (nibble_j - 8) * xq_j   (exact in int32: |sumi_b| <= 32 * 8 * 128)
//
// Definition: src/TinyLlama.Core/Quantization/IntegerDotRef.cs (ggml's ggml_vec_dot_q4_0_q8_0 restated); the
// CPU twin is Backends/Cpu/IntegerDot.cs. The float association ((float)sumi * d_w) * d_x is the reference's.
//
// Activations on the device (QuantizeQ8_0Kernel, one thread per block of 32): llama.cpp's rounding, as
// QuantTypes.QuantizeRowQ8_0: amax = max |x_j|, d = amax / 127, id = 1 / d (0 when d = 0), q_j = x_j id rounded
// half away from zero (t = trunc(v), q = t + sign(v) when |v - t| >= 0.5, all exact), d stored rounded to
// binary16 (HalfBits.FromDouble of the exact widening: the same nearest-even rounding as (Half)d). A block
// with a non-finite value (where the CPU quantizer throws) gets d = NaN and q = 0, so its outputs are NaN.
// The device layout is not ggml's 34-byte block but 9 int32 per block (QuantizedBlockInts): int 0 is d
// widened to f32 (its bits), ints 1..8 pack q_0..q_31 four to an int, little-endian; 4-byte aligned, so a
// lane loads four activations with one load (ggml's CUDA block_q8_1 is likewise 4-byte aligned).
//
// Weights: a Q4_0 block read as 9 16-bit words (MatMulQ4.cs). Words 1 + 2h and 2 + 2h hold qs[4h .. 4h + 3],
// i.e. weights 4h .. 4h + 3 (low nibbles) and 4h + 16 .. 4h + 19 (high nibbles), which meet activation ints
// 1 + h and 5 + h. Four nibbles become four signed bytes nibble - 8 without a borrow between bytes:
// ((nibbles & 0x0F0F0F0F) + 0x78787878) ^ 0x80808080 (each byte n + 120 is 120..135, and flipping its top bit
// subtracts 128). Then two 4-way int8 dots per (block, h):
//   Dp4aDot      dp4a.s32.s32 through inline PTX (CudaAsm) on CUDA; the host takes it only on sm_61 and
//                newer, where the instruction exists. Elsewhere CudaAsm.IsSupported is false and it runs
//                the portable code, so the CPU accelerator tests its data flow (not the instruction).
//   PortableDot  four sign-extended byte products added to the accumulator (OpenCL, the CPU accelerator).
//
// Kernels:
//   1  IntegerMatVecKernel1: one thread per output, blocks in order, so its float sum equals the CPU's
//      IntegerDot bit for bit where the compiler does not contract (the CPU accelerator).
//   2  IntegerMatVecKernel2 (M <= 4 on 32-lane warps): one warp per (row n of w, row m of x), 8 rows per
//      256-thread group. Four lanes share a block (lane h of the four takes h above), so a warp step covers
//      8 blocks: 8 runs of 16 bytes of w and 8 x 36 bytes of xq. The four lanes' int partials meet through
//      two xor-shuffles, the first of them scales the block sum once, and the lanes' float sums meet through
//      three more shuffles at the end. The loop runs the same number of steps in every lane (a lane past
//      the last block contributes 0), as the shuffles need the whole warp. Traffic: w once per row of x
//      (0.5625 bytes per weight, as the f32 mat-vec) plus 1.125 bytes per activation instead of 4; the
//      expected gain is arithmetic: 8 weights per two dp4a instead of 8 FMAs and 8 nibble-to-float
//      conversions. Not measured yet: no GPU was at hand when this was written (benchmark it before relying
//      on the CUDA default, IlgpuBackend.Q4Decode).
// Only decoding (M <= 4) takes this path; prefill stays on the f32 tiled kernel (MatMulQ4.cs, version 3).
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace TinyLlama.Kernels;

/// <summary>A 4-way int8 dot: c + sum over bytes i of (sbyte)a_i * (sbyte)b_i.</summary>
internal interface IDot4
{
    int Dot4(int a, int b, int c);
}

/// <summary>dp4a.s32.s32 on CUDA (sm_61 and newer), the portable sum elsewhere.</summary>
internal readonly struct Dp4aDot : IDot4
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int Dot4(int a, int b, int c)
    {
        if (CudaAsm.IsSupported)
        {
            CudaAsm.Emit("dp4a.s32.s32 %0, %1, %2, %3;", out int r, a, b, c);
            return r;
        }
        return PortableDot.Sum(a, b, c);
    }
}

/// <summary>Four multiply-adds on sign-extended bytes (every accelerator).</summary>
internal readonly struct PortableDot : IDot4
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int Dot4(int a, int b, int c) => Sum(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int Sum(int a, int b, int c) =>
        c + (sbyte)a * (sbyte)b + (sbyte)(a >> 8) * (sbyte)(b >> 8) + (sbyte)(a >> 16) * (sbyte)(b >> 16) + (a >> 24) * (b >> 24);
}

/// <summary>The integer Q4_0 x Q8_0 kernels (see the header of IntegerDotQ4.cs) and their host-side launcher.</summary>
internal static class IntegerDotQ4Kernels
{
    /// <summary>int32 per quantized activation block: the scale's bits, then 32 int8 four to an int.</summary>
    public const int QuantizedBlockInts = 9;

    private const int BlockWords = MatMulQ4Kernels.BlockWords;
    private const int Threads = 256;
    private const int RowsPerGroup = Threads / 32;

    // ---------------------------------------------------------------- activations

    /// <summary>Block i of x (values 32 i .. 32 i + 31, x dense [M, K]) into xq[9 i .. 9 i + 8].</summary>
    internal static void QuantizeQ8_0Kernel(Index1D i, ArrayView<float> x, ArrayView<int> xq)
    {
        int xb = i * 32;
        float amax = 0;
        bool finite = true;
        for (int j = 0; j < 32; j++)
        {
            float v = x[xb + j];
            finite &= (Interop.FloatAsInt(v) & 0x7F80_0000u) != 0x7F80_0000u;
            amax = Math.Max(amax, Math.Abs(v));
        }
        float d = amax / 127f;
        float id = d != 0 ? 1f / d : 0f;
        float stored = finite ? HalfBits.ToSingle(HalfBits.FromDouble(d)) : float.NaN;
        int q = i * QuantizedBlockInts;
        xq[q] = (int)Interop.FloatAsInt(stored);
        for (int g = 0; g < 8; g++)
        {
            int packed = 0;
            for (int l = 0; l < 4; l++)
            {
                int r = finite ? RoundHalfAway(x[xb + 4 * g + l] * id) : 0;
                packed |= (r & 0xFF) << (8 * l);
            }
            xq[q + 1 + g] = packed;
        }
    }

    /// <summary>v rounded to the nearest integer, halves away from zero (|v| &lt;= 127.5 here, so every step is exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int RoundHalfAway(float v)
    {
        int t = (int)v;                         // toward zero
        float f = v - t;                        // the fraction, exact
        return f >= 0.5f ? t + 1 : f <= -0.5f ? t - 1 : t;
    }

    // ---------------------------------------------------------------- dots

    /// <summary>Four weights nibble - 8 as signed bytes: the nibbles at bit offset 0 of each byte of <paramref name="nibbles"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Centered(int nibbles) => ((nibbles & 0x0F0F0F0F) + 0x78787878) ^ unchecked((int)0x80808080);

    /// <summary>The int sum of quarter h (weights 4h .. 4h + 3 and 4h + 16 .. 4h + 19) of the Q4_0 block at word <paramref name="word"/> with the activation block at int <paramref name="xBlock"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int QuarterSum<TDot>(ArrayView<ushort> w, int word, ArrayView<int> xq, int xBlock, int h) where TDot : struct, IDot4
    {
        TDot dot = default;
        int packed = w[word + 1 + 2 * h] | (w[word + 2 + 2 * h] << 16);     // qs[4h .. 4h + 3]
        int sum = dot.Dot4(Centered(packed), xq[xBlock + 1 + h], 0);
        return dot.Dot4(Centered(packed >> 4), xq[xBlock + 5 + h], sum);
    }

    /// <summary>sumi of the Q4_0 block at word <paramref name="word"/> with the activation block at int <paramref name="xBlock"/> (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int BlockSum<TDot>(ArrayView<ushort> w, int word, ArrayView<int> xq, int xBlock) where TDot : struct, IDot4 =>
        QuarterSum<TDot>(w, word, xq, xBlock, 0) + QuarterSum<TDot>(w, word, xq, xBlock, 1)
        + QuarterSum<TDot>(w, word, xq, xBlock, 2) + QuarterSum<TDot>(w, word, xq, xBlock, 3);

    /// <summary>sums[i] for i = (m N + n) blocks + b: sumi of block b of row n of w with block b of row m of xq (a check of the int arithmetic).</summary>
    internal static void BlockSumsKernel<TDot>(Index1D i, ArrayView<int> xq, ArrayView<ushort> w, ArrayView<int> sums, Q4Shape s) where TDot : struct, IDot4
    {
        int blocks = s.Blocks;
        int mn = i / blocks, b = i - mn * blocks;
        int m = mn / s.N, n = mn - m * s.N;
        sums[i] = BlockSum<TDot>(w, (n * blocks + b) * BlockWords, xq, (m * blocks + b) * QuantizedBlockInts);
    }

    /// <summary>Version 1: output i = m N + n, one thread each, blocks in order.</summary>
    internal static void IntegerMatVecKernel1<TDot>(Index1D i, ArrayView<int> xq, ArrayView<ushort> w, ArrayView<float> y, Q4Shape s) where TDot : struct, IDot4
    {
        int m = i / s.N, n = i - m * s.N;
        int blocks = s.Blocks;
        float sumf = 0;
        for (int b = 0; b < blocks; b++)
        {
            int word = (n * blocks + b) * BlockWords, xBlock = (m * blocks + b) * QuantizedBlockInts;
            float part = BlockSum<TDot>(w, word, xq, xBlock) * HalfBits.ToSingle(w[word]);
            sumf += part * Interop.IntAsFloat((uint)xq[xBlock]);
        }
        y[i] = sumf;
    }

    /// <summary>Version 2: warp Group.IdxX / 32 of group Grid.IdxX computes y[Grid.IdxY, 8 Grid.IdxX + warp].</summary>
    internal static void IntegerMatVecKernel2<TDot>(ArrayView<int> xq, ArrayView<ushort> w, ArrayView<float> y, Q4Shape s) where TDot : struct, IDot4
    {
        int lane = Group.IdxX & 31;
        int n = Grid.IdxX * RowsPerGroup + (Group.IdxX >> 5);
        int m = Grid.IdxY;
        if (n >= s.N) return;                      // the whole warp leaves together
        int blocks = s.Blocks;
        int h = lane & 3;
        float sumf = 0;
        for (int b0 = 0; b0 < blocks; b0 += 8)
        {
            int b = b0 + (lane >> 2);
            bool inside = b < blocks;
            int word = (n * blocks + (inside ? b : 0)) * BlockWords;
            int xBlock = (m * blocks + (inside ? b : 0)) * QuantizedBlockInts;
            int sumi = inside ? QuarterSum<TDot>(w, word, xq, xBlock, h) : 0;
            sumi += Warp.ShuffleXor(sumi, 1);
            sumi += Warp.ShuffleXor(sumi, 2);
            if (inside && h == 0) sumf += sumi * HalfBits.ToSingle(w[word]) * Interop.IntAsFloat((uint)xq[xBlock]);
        }
        for (int lanes = 16; lanes >= 4; lanes >>= 1) sumf += Warp.ShuffleXor(sumf, lanes);
        if (lane == 0) y[m * s.N + n] = sumf;
    }

    // ---------------------------------------------------------------- host side

    /// <summary>Throws unless y [M, N] = x [M, K] @ dequantize(w)^T through xq fits views of these lengths (w in 16-bit words).</summary>
    internal static void Validate(Q4Shape s, long xLength, long xqInts, long wWords, long yLength)
    {
        MatMulQ4Kernels.Validate(s, xLength, wWords, yLength);
        long ints = (long)s.M * s.Blocks * QuantizedBlockInts;
        if (ints > xqInts) throw new ArgumentException($"matmul q4 integer: xq needs {ints} ints, its view has {xqInts}");
        if (ints > int.MaxValue) throw new NotSupportedException($"matmul q4 integer: M={s.M} K={s.K} exceed int indexing");
    }

    /// <summary>
    /// Launches xq = quantize_q8_0(x), then y = x @ dequantize(w)^T through the integer dots, on
    /// <paramref name="stream"/> without waiting; <paramref name="xq"/> holds M K / 32 blocks of 9 ints.
    /// <paramref name="dp4a"/> selects <see cref="Dp4aDot"/> (only for CUDA devices of sm_61 and newer),
    /// <paramref name="warp"/> version 2 (32-lane warps, 256-thread groups) over version 1.
    /// </summary>
    internal static void Launch(Accelerator accelerator, AcceleratorStream stream, in MatMulQ4Args args, ArrayView<int> xq, bool dp4a, bool warp)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(stream);
        var s = args.Shape;
        Validate(s, args.X.Length, xq.Length, args.W.Length, args.Y.Length);
        if (s.M == 0 || s.N == 0) return;
        KernelCache.Get(accelerator, "q4q8-quantize", static acc =>
            acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>>(QuantizeQ8_0Kernel))(stream, s.M * s.Blocks, args.X, xq);
        if (dp4a) Dots<Dp4aDot>(accelerator, stream, args, xq, warp);
        else Dots<PortableDot>(accelerator, stream, args, xq, warp);
    }

    private static void Dots<TDot>(Accelerator accelerator, AcceleratorStream stream, in MatMulQ4Args args, ArrayView<int> xq, bool warp) where TDot : struct, IDot4
    {
        var s = args.Shape;
        if (!warp)
        {
            KernelCache.Get(accelerator, ("q4q8-1", typeof(TDot)), static acc =>
                acc.LoadAutoGroupedKernel<Index1D, ArrayView<int>, ArrayView<ushort>, ArrayView<float>, Q4Shape>(IntegerMatVecKernel1<TDot>))
                (stream, s.M * s.N, xq, args.W, args.Y, s);
            return;
        }
        GemmKernels.RequireGroup(accelerator, Threads, KernelsInfo.WarpSize, 0, "q4 integer mat-vec");
        if (s.M > 65535) throw new NotSupportedException($"matmul q4 integer: the mat-vec kernel serves at most 65535 rows of x, got {s.M}");
        var grid = new Index3D((s.N + RowsPerGroup - 1) / RowsPerGroup, s.M, 1);
        KernelCache.Get(accelerator, ("q4q8-2", typeof(TDot)), static acc =>
            acc.LoadKernel<ArrayView<int>, ArrayView<ushort>, ArrayView<float>, Q4Shape>(IntegerMatVecKernel2<TDot>))
            (stream, new KernelConfig(grid, new Index3D(Threads, 1, 1)), xq, args.W, args.Y, s);
    }
}
