// Q4_0 weights repacked once into groups of eight interleaved rows, the layout of the integer mat-vec that
// decoding runs and of the integer GEMM that prompt processing runs (after llama.cpp's CPU "repack" buffers,
// block_q4_0x8 with ggml_gemv / ggml_gemm_q4_0_8x8_q8_0; the Q4_0 and Q8_0 formats are in Quantization/QuantType.cs).
//
// Why: in a plain Q4_0 row (IntegerRows.cs) every 32-weight block pays its own binary16 scale lookup, its own
// int -> f32 conversion, scale multiply and FMA, and a row's lanes are summed at its end: about 17 instructions a
// block, which keeps decoding instruction-bound. With eight rows side by side the activation block is loaded
// once for all eight, one conversion, one multiply and one FMA serve eight rows (one lane each), the eight
// scales are widened together, and the row sums land in the lanes of one accumulator: about 6.5 instructions a
// row-block. The GEMM keeps a group's unpacked nibbles in registers across four tokens.
//
// Layout: rows 8g .. 8g + 7 form group g; per group, per block b (K / 32 of them), 144 bytes:
//     [0, 16)     the eight rows' binary16 scales d, row 8g + r at bytes 2r, 2r + 1
//     [16, 144)   four 32-byte chunks; chunk i holds, for r = 0..7, row 8g + r's nibble bytes 4i .. 4i + 3
//                 (their low nibbles are weights 4i .. 4i + 3, their high nibbles weights 16 + 4i .. 16 + 4i + 3)
// The same bytes as the eight rows' blocks (8 x 18), rearranged; rows in groups of eight only (callers keep the
// plain rows for a matrix whose row count is not a multiple of 8). Four bytes per row per chunk is what makes
// every int32 lane of a pmaddwd one row's sum, so no horizontal add is needed (an earlier layout with 16 bytes
// per row needed three phaddd per block and ran the GEMM no faster than the f32 path).
//
// Per block, with activations q (Q8_0: 32 int8 in its block, scale d_x) and nibbles u (weight (u - 8) d_w):
//     p     = sum_i pmaddubsw(u_low(chunk i), q[4i .. 4i + 4) in every lane) + pmaddubsw(u_high(chunk i), q[16 + 4i ..))
//             (int16: 16 lanes, two per row; each pmaddubsw pair <= 2 x 15 x 127 = 3,810 in magnitude and eight
//              of them <= 30,480 < 32,767, so nothing saturates or wraps)
//     sums  = pmaddwd(p, 1) + (-8 sum_j q_j)   = [row 0, 1, ..., 7]   (the bias is the same for every row:
//             QuantizedActivations.Bias)
//     acc[r] = fma(float(sums[r]) * d_x, d_w[r], acc[r])           (exact integers; one f32 rounding order)
// With AVX-VNNI, vpdpbusd accumulates the eight products in int32 directly.
// The binary16 scales are widened in registers: the magnitude bits shifted into an f32's exponent and mantissa
// times 2^112 (exact for normal and subnormal halves), the sign or-ed back. A half that is infinite or NaN
// would come out finite that way, so a tensor holding one is not repacked (the plain rows handle it).
//
// Tests: tests/TinyLlama.Tests/Quantization/RepackedQ4_0Tests.cs check every path bit for bit against
// ReferenceMatVec (scalar loops in the same f32 order) and within a bound against an f64 sum.
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

/// <summary>Q4_0 rows repacked into interleaved groups of eight for the integer mat-vec and GEMM (see the file header).</summary>
public sealed unsafe class RepackedQ4_0
{
    /// <summary>Rows per group.</summary>
    public const int GroupRows = 8;

    private const int Q4Bytes = 18, GroupBlockBytes = GroupRows * Q4Bytes;

    // How far ahead the mat-vec asks for weights (software prefetch, 3 cache lines a block): with the hardware
    // prefetcher alone, decoding the TinyLlama-1.1B shape ran at ~80% of the read bandwidth; with it, 1 thread
    // went from 16.9 to 20.3 tokens/s (RESULTS.md, session 6).
    private const int PrefetchAhead = 16 * GroupBlockBytes;

    private readonly byte[] data;   // pinned: Groups x Blocks x 144 bytes
    private readonly byte* p;

    /// <summary>Repacks <paramref name="rows"/> rows of <paramref name="k"/> Q4_0 weights (rows a multiple of 8, k of 32).</summary>
    public RepackedQ4_0(ReadOnlySpan<byte> q4Rows, int rows, int k)
    {
        if (rows <= 0 || rows % GroupRows != 0) throw new ArgumentException($"repacked q4_0: rows must be a positive multiple of {GroupRows}, got {rows}", nameof(rows));
        if (k <= 0 || k % 32 != 0) throw new ArgumentException($"repacked q4_0: K must be a positive multiple of 32, got {k}", nameof(k));
        long bytes = (long)rows * (k / 32) * Q4Bytes;
        if (q4Rows.Length != bytes) throw new ArgumentException($"repacked q4_0: {q4Rows.Length} bytes do not hold {rows} rows of {k} q4_0 weights ({bytes} bytes)", nameof(q4Rows));
        Rows = rows;
        K = k;
        data = GC.AllocateUninitializedArray<byte>(checked((int)bytes), pinned: true);
        p = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(data));
        fixed (byte* src = q4Rows)
        {
            byte* s = src;
            CpuParallel.For(Groups, (long)k * GroupRows, (g0, g1) => Pack(s, g0, g1));
        }
    }

    /// <summary>Rows of the matrix (a multiple of 8).</summary>
    public int Rows { get; }

    /// <summary>Weights per row (a multiple of 32).</summary>
    public int K { get; }

    /// <summary>Groups of eight rows.</summary>
    public int Groups => Rows / GroupRows;

    private int Blocks => K / 32;

    /// <summary>The repacked bytes (for tests: the layout of the file header).</summary>
    public ReadOnlySpan<byte> Bytes => data;

    /// <summary>Whether this CPU runs the repacked kernels (AVX2 and FMA; AVX-VNNI where present).</summary>
    public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;

    private void Pack(byte* src, int g0, int g1)
    {
        int blocks = Blocks;
        long rowBytes = (long)blocks * Q4Bytes;
        for (int g = g0; g < g1; g++)
        {
            byte* dst = p + (long)g * blocks * GroupBlockBytes;
            for (int b = 0; b < blocks; b++, dst += GroupBlockBytes)
            {
                for (int r = 0; r < GroupRows; r++)
                {
                    byte* block = src + (GroupRows * (long)g + r) * rowBytes + (long)b * Q4Bytes;
                    *(ushort*)(dst + 2 * r) = *(ushort*)block;
                    for (int i = 0; i < 4; i++) *(uint*)(dst + 16 + 32 * i + 4 * r) = *(uint*)(block + 2 + 4 * i);
                }
            }
        }
    }

    // ---------------------------------------------------------------- the cache: one repack per weight tensor

    // Block tensors are frozen (never trained, Ops/Functional.Quantized.cs), so a repack stays valid as long as its
    // storage lives; the table holds it no longer than that.
    private static readonly ConditionalWeakTable<Storage, ConcurrentDictionary<(long Offset, int Rows, int K), RepackedQ4_0?>> Cache = new();

    /// <summary>
    /// The repacked form of a Q4_0 weight tensor w [rows, row bytes] on the CPU, made on first use and kept while
    /// w's storage lives; null where the kernels do not apply (not AVX2, rows not a multiple of 8, a scale that is
    /// infinite or NaN).
    /// </summary>
    public static RepackedQ4_0? For(Tensor w)
    {
        if (!IsSupported || w.DType != DType.Q4 || w.Rank != 2 || w.Storage is not CpuStorage || !w.IsContiguous) return null;
        int rows = (int)w.Size(0), rowBytes = (int)w.Size(1), k = QuantType.Q4_0.Traits().RowLength(rowBytes);
        if (rows % GroupRows != 0) return null;
        long offset = (long)w.Offset * w.DType.SizeOf();
        var perStorage = Cache.GetValue(w.Storage, _ => new());
        return perStorage.GetOrAdd((offset, rows, k), _ =>
        {
            var storage = (CpuStorage)w.Storage;
            var bytes = storage.AsSpan<byte>().Slice(checked((int)offset), rows * rowBytes);
            if (!AllScalesFinite(bytes, rows, k)) return null;
            var packed = new RepackedQ4_0(bytes, rows, k);
            if (storage.IsExternal) fixed (byte* b = bytes) ReleasePages(b, bytes.Length);
            return packed;
        });
    }

    // The plain rows of a memory-mapped file are no longer read once repacked (unless the f32-activation path asks
    // again, and then they fault back in from the file): hand their pages back so the process does not hold both
    // copies (llama.cpp's loader reads into its repack buffer without keeping the mapping's pages). MADV_PAGEOUT
    // reclaims clean file pages only; a page someone wrote (a private copy) stays, so no data is ever dropped. Linux
    // 5.4 and later; elsewhere, or if the kernel refuses, the pages stay resident, which is only memory.
    private static void ReleasePages(byte* start, long length)
    {
        if (!OperatingSystem.IsLinux()) return;
        const long Page = 4096;
        const int MadvPageout = 21;
        long first = ((long)start + Page - 1) & ~(Page - 1), end = ((long)start + length) & ~(Page - 1);
        if (end > first) _ = Madvise((void*)first, (nuint)(end - first), MadvPageout);
    }

    [DllImport("libc.so.6", EntryPoint = "madvise")]
    private static extern int Madvise(void* address, nuint length, int advice);

    private static bool AllScalesFinite(ReadOnlySpan<byte> rows, int count, int k)
    {
        long blocks = (long)count * (k / 32);
        for (long b = 0; b < blocks; b++)
            if ((BitConverter.ToUInt16(rows.Slice((int)(b * Q4Bytes), 2)) & 0x7C00) == 0x7C00) return false;
        return true;
    }

    // ---------------------------------------------------------------- mat-vec (decoding)

    /// <summary>
    /// y[8g + r] (=|+=) dot(row 8g + r, x) for groups [group0, group1), x quantized to Q8_0 in
    /// <paramref name="a"/> (K values).
    /// </summary>
    public void MatVec(QuantizedActivations a, float* y, int group0, int group1, bool accumulate)
    {
        if (a.K != K) throw new ArgumentException($"repacked q4_0: activations hold {a.K} values, expected K = {K}", nameof(a));
        if ((uint)group0 > (uint)group1 || group1 > Groups) throw new ArgumentOutOfRangeException(nameof(group1), $"groups [{group0}, {group1}) outside [0, {Groups})");
        bool vnni = AvxVnni.IsSupported;
        int blocks = Blocks;
        for (int g = group0; g < group1; g++)
        {
            byte* w = p + (long)g * blocks * GroupBlockBytes;
            var acc = vnni ? GroupDot<Vnni>(w, a.Q, a.D, a.Bias, blocks) : GroupDot<Avx2Sums>(w, a.Q, a.D, a.Bias, blocks);
            float* yg = y + GroupRows * g;
            if (accumulate) acc = Avx.Add(acc, Avx.LoadVector256(yg));
            Avx.Store(yg, acc);
        }
    }

    /// <summary>The AVX2 path of <see cref="MatVec"/> even where AVX-VNNI exists (for tests).</summary>
    internal void MatVecAvx2(QuantizedActivations a, float* y)
    {
        for (int g = 0; g < Groups; g++)
            Avx.Store(y + GroupRows * g, GroupDot<Avx2Sums>(p + (long)g * Blocks * GroupBlockBytes, a.Q, a.D, a.Bias, Blocks));
    }

    /// <summary>A block's eight row sums (file header) on one instruction set; w: the block's four chunks, unpacked.</summary>
    private interface IBlockSums
    {
        static abstract Vector256<int> Sums(in Unpacked w, sbyte* q);
    }

    // A group-block's nibbles, low (weights 4i ..) and high (weights 16 + 4i ..) per chunk i.
    private readonly struct Unpacked
    {
        public readonly Vector256<byte> L0, H0, L1, H1, L2, H2, L3, H3;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Unpacked(byte* w)
        {
            var low4 = Vector256.Create((byte)0x0F);
            var v0 = Avx.LoadVector256(w + 16);
            var v1 = Avx.LoadVector256(w + 48);
            var v2 = Avx.LoadVector256(w + 80);
            var v3 = Avx.LoadVector256(w + 112);
            L0 = Avx2.And(v0, low4); H0 = Avx2.And(Avx2.ShiftRightLogical(v0.AsUInt16(), 4).AsByte(), low4);
            L1 = Avx2.And(v1, low4); H1 = Avx2.And(Avx2.ShiftRightLogical(v1.AsUInt16(), 4).AsByte(), low4);
            L2 = Avx2.And(v2, low4); H2 = Avx2.And(Avx2.ShiftRightLogical(v2.AsUInt16(), 4).AsByte(), low4);
            L3 = Avx2.And(v3, low4); H3 = Avx2.And(Avx2.ShiftRightLogical(v3.AsUInt16(), 4).AsByte(), low4);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private Unpacked(Vector256<byte> l0, Vector256<byte> h0, Vector256<byte> l1, Vector256<byte> h1,
            Vector256<byte> l2, Vector256<byte> h2, Vector256<byte> l3, Vector256<byte> h3)
        {
            L0 = l0; H0 = h0; L1 = l1; H1 = h1; L2 = l2; H2 = h2; L3 = l3; H3 = h3;
        }

        // From UnpackGroup's buffer: the eight vectors as Store left them.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Unpacked Load(byte* u) => new(
            Avx.LoadVector256(u), Avx.LoadVector256(u + 32), Avx.LoadVector256(u + 64), Avx.LoadVector256(u + 96),
            Avx.LoadVector256(u + 128), Avx.LoadVector256(u + 160), Avx.LoadVector256(u + 192), Avx.LoadVector256(u + 224));

        public void Store(byte* u)
        {
            Avx.Store(u, L0); Avx.Store(u + 32, H0); Avx.Store(u + 64, L1); Avx.Store(u + 96, H1);
            Avx.Store(u + 128, L2); Avx.Store(u + 160, H2); Avx.Store(u + 192, L3); Avx.Store(u + 224, H3);
        }
    }

    // A group's blocks unpacked once for a GEMM call: per block the eight nibble vectors and the eight f32 scales.
    private const int UnpackedBlockBytes = 8 * 32 + 32;

    // Largest unpacked group kept on the stack (K up to 7,264: 227 blocks); larger K unpacks per tile.
    private const int MaxUnpackedBytes = 64 * 1024;

    /// <summary>Where a GEMM tile reads a group-block from (its nibbles unpacked, its eight scales as f32).</summary>
    private interface IGroupBlocks
    {
        static abstract int Stride { get; }
        static abstract Unpacked Nibbles(byte* block);
        static abstract Vector256<float> BlockScales(byte* block);
    }

    // The repacked bytes: each tile unpacks every block itself.
    private readonly struct PackedBlocks : IGroupBlocks
    {
        public static int Stride => GroupBlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Unpacked Nibbles(byte* block) => new(block);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> BlockScales(byte* block) => Scales(block);
    }

    // UnpackGroup's buffer: eight loads a block instead of four loads, twelve unpacking operations and the scale
    // conversion.
    private readonly struct UnpackedBlocks : IGroupBlocks
    {
        public static int Stride => UnpackedBlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Unpacked Nibbles(byte* block) => Unpacked.Load(block);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> BlockScales(byte* block) => Avx.LoadVector256((float*)(block + 256));
    }

    private static void UnpackGroup(byte* w, int blocks, byte* u)
    {
        for (int b = 0; b < blocks; b++, w += GroupBlockBytes, u += UnpackedBlockBytes)
        {
            new Unpacked(w).Store(u);
            Avx.Store((float*)(u + 256), Scales(w));
        }
    }

    // Four activation bytes q[j .. j + 4) in every 32-bit lane.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<sbyte> Quad(sbyte* q) => Vector256.Create(*(int*)q).AsSByte();

    private readonly struct Avx2Sums : IBlockSums
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Sums(in Unpacked w, sbyte* q)
        {
            var p0 = Avx2.Add(Avx2.MultiplyAddAdjacent(w.L0, Quad(q)), Avx2.MultiplyAddAdjacent(w.H0, Quad(q + 16)));
            var p1 = Avx2.Add(Avx2.MultiplyAddAdjacent(w.L1, Quad(q + 4)), Avx2.MultiplyAddAdjacent(w.H1, Quad(q + 20)));
            var p2 = Avx2.Add(Avx2.MultiplyAddAdjacent(w.L2, Quad(q + 8)), Avx2.MultiplyAddAdjacent(w.H2, Quad(q + 24)));
            var p3 = Avx2.Add(Avx2.MultiplyAddAdjacent(w.L3, Quad(q + 12)), Avx2.MultiplyAddAdjacent(w.H3, Quad(q + 28)));
            return Avx2.MultiplyAddAdjacent(Avx2.Add(Avx2.Add(p0, p1), Avx2.Add(p2, p3)), Vector256.Create((short)1));
        }
    }

    private readonly struct Vnni : IBlockSums
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Sums(in Unpacked w, sbyte* q)
        {
            var s = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, w.L0, Quad(q));
            s = AvxVnni.MultiplyWideningAndAdd(s, w.H0, Quad(q + 16));
            s = AvxVnni.MultiplyWideningAndAdd(s, w.L1, Quad(q + 4));
            s = AvxVnni.MultiplyWideningAndAdd(s, w.H1, Quad(q + 20));
            s = AvxVnni.MultiplyWideningAndAdd(s, w.L2, Quad(q + 8));
            s = AvxVnni.MultiplyWideningAndAdd(s, w.H2, Quad(q + 24));
            s = AvxVnni.MultiplyWideningAndAdd(s, w.L3, Quad(q + 12));
            return AvxVnni.MultiplyWideningAndAdd(s, w.H3, Quad(q + 28));
        }
    }

    // The eight rows' binary16 scales of a group-block as f32 (file header; finite halves only).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Scales(byte* w)
    {
        var h = Avx2.ConvertToVector256Int32((ushort*)w);
        var magnitude = Avx2.ShiftLeftLogical(Avx2.And(h, Vector256.Create(0x7FFF)), 13).AsSingle();
        var sign = Avx2.ShiftLeftLogical(Avx2.And(h, Vector256.Create(0x8000)), 16).AsSingle();
        return Avx.Or(Avx.Multiply(magnitude, Vector256.Create(0x77800000).AsSingle()) /* 2^112 */, sign);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector256<float> GroupDot<T>(byte* w, sbyte* q, float* d, int* bias, int blocks) where T : struct, IBlockSums
    {
        var acc = Vector256<float>.Zero;
        for (int b = 0; b < blocks; b++, w += GroupBlockBytes, q += 32)
        {
            Sse.Prefetch0(w + PrefetchAhead);
            Sse.Prefetch0(w + PrefetchAhead + 64);
            Sse.Prefetch0(w + PrefetchAhead + 128);
            acc = Accumulate(T.Sums(new Unpacked(w), q), d[b], bias[b], Scales(w), acc);
        }
        return acc;
    }

    // acc + float(sums + bias) * d_x * d_w[row], per row lane.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Accumulate(Vector256<int> sums, float d, int bias, Vector256<float> scales, Vector256<float> acc) =>
        Fma.MultiplyAdd(Avx.Multiply(Avx.ConvertToVector256Single(Avx2.Add(sums, Vector256.Create(bias))), Vector256.Create(d)), scales, acc);

    // ---------------------------------------------------------------- GEMM (prompt processing)

    /// <summary>
    /// y[t, 8g + r] = dot(row 8g + r, x_t) for every token t of <paramref name="x"/> (M rows quantized to Q8_0)
    /// and groups [group0, group1); y has row stride <paramref name="ldy"/>.
    /// </summary>
    public void MatMul(Q8_0Rows x, float* y, long ldy, int group0, int group1)
    {
        if (x.K != K) throw new ArgumentException($"repacked q4_0: activations hold {x.K} values per row, expected K = {K}", nameof(x));
        if ((uint)group0 > (uint)group1 || group1 > Groups) throw new ArgumentOutOfRangeException(nameof(group1), $"groups [{group0}, {group1}) outside [0, {Groups})");
        if (AvxVnni.IsSupported) MatMul<Vnni>(x, y, ldy, group0, group1);
        else MatMul<Avx2Sums>(x, y, ldy, group0, group1);
    }

    /// <summary>The AVX2 path of <see cref="MatMul"/> even where AVX-VNNI exists (for tests).</summary>
    internal void MatMulAvx2(Q8_0Rows x, float* y, long ldy) => MatMul<Avx2Sums>(x, y, ldy, 0, Groups);

    private void MatMul<T>(Q8_0Rows x, float* y, long ldy, int group0, int group1) where T : struct, IBlockSums
    {
        int blocks = Blocks, m = x.M, k = K;
        // With more than one tile, each group's nibbles are unpacked once (into L1/L2) instead of once per tile.
        bool unpackOnce = m >= 8 && blocks * UnpackedBlockBytes <= MaxUnpackedBytes;
        byte* raw = stackalloc byte[unpackOnce ? blocks * UnpackedBlockBytes + 32 : 32];
        byte* u = (byte*)(((nint)raw + 31) & ~(nint)31);
        for (int g = group0; g < group1; g++)
        {
            byte* w = p + (long)g * blocks * GroupBlockBytes;
            int t = 0;
            if (unpackOnce)
            {
                UnpackGroup(w, blocks, u);
                for (; t + 4 <= m; t += 4)
                    GroupTile4<T, UnpackedBlocks>(u, x.Q + (long)t * k, k, x.D + (long)t * blocks, x.Bias + (long)t * blocks, blocks, y + t * ldy + GroupRows * g, ldy);
            }
            for (; t + 4 <= m; t += 4)
                GroupTile4<T, PackedBlocks>(w, x.Q + (long)t * k, k, x.D + (long)t * blocks, x.Bias + (long)t * blocks, blocks, y + t * ldy + GroupRows * g, ldy);
            for (; t < m; t++)
                Avx.Store(y + t * ldy + GroupRows * g, GroupDot<T>(w, x.Q + (long)t * k, x.D + (long)t * blocks, x.Bias + (long)t * blocks, blocks));
        }
    }

    // Four tokens (rows of q with stride k; d and bias with stride blocks) against one group, read block by block
    // from TBlocks: each block's nibbles are in registers once for the four tokens.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GroupTile4<T, TBlocks>(byte* w, sbyte* q, int k, float* d, int* bias, int blocks, float* y, long ldy)
        where T : struct, IBlockSums where TBlocks : struct, IGroupBlocks
    {
        Vector256<float> acc0 = Vector256<float>.Zero, acc1 = acc0, acc2 = acc0, acc3 = acc0;
        sbyte* q1 = q + k, q2 = q1 + k, q3 = q2 + k;
        for (int b = 0; b < blocks; b++, w += TBlocks.Stride)
        {
            var u = TBlocks.Nibbles(w);
            var scales = TBlocks.BlockScales(w);
            int o = 32 * b;
            acc0 = Accumulate(T.Sums(u, q + o), d[b], bias[b], scales, acc0);
            acc1 = Accumulate(T.Sums(u, q1 + o), d[blocks + b], bias[blocks + b], scales, acc1);
            acc2 = Accumulate(T.Sums(u, q2 + o), d[2 * blocks + b], bias[2 * blocks + b], scales, acc2);
            acc3 = Accumulate(T.Sums(u, q3 + o), d[3 * blocks + b], bias[3 * blocks + b], scales, acc3);
        }
        Avx.Store(y, acc0);
        Avx.Store(y + ldy, acc1);
        Avx.Store(y + 2 * ldy, acc2);
        Avx.Store(y + 3 * ldy, acc3);
    }

    // ---------------------------------------------------------------- reference

    /// <summary>
    /// The definition the kernels must match bit for bit: per row and block the exact integer sum
    /// sum_j (u_j - 8) q_j, then acc = fma(float(sum) * d_x, d_w, acc) block after block (plain rows, not the
    /// repacked bytes).
    /// </summary>
    public static void ReferenceMatVec(ReadOnlySpan<byte> q4Rows, int rows, int k, ReadOnlySpan<sbyte> q, ReadOnlySpan<float> d, Span<float> y)
    {
        int blocks = k / 32;
        for (int r = 0; r < rows; r++)
        {
            float acc = 0;
            for (int b = 0; b < blocks; b++)
            {
                var block = q4Rows.Slice((r * blocks + b) * Q4Bytes, Q4Bytes);
                int s = 0;
                for (int j = 0; j < 16; j++)
                    s += ((block[2 + j] & 0x0F) - 8) * q[32 * b + j] + ((block[2 + j] >> 4) - 8) * q[32 * b + j + 16];
                acc = MathF.FusedMultiplyAdd(s * d[b], QuantTypes.HalfToSingle(BitConverter.ToUInt16(block)), acc);
            }
            y[r] = acc;
        }
    }
}

/// <summary>
/// M rows of activations quantized to Q8_0 for <see cref="RepackedQ4_0.MatMul"/>: int8 values [M, K], block scales
/// [M, K / 32] and the blocks' -8 sum(q) [M, K / 32]. Buffers grow to the largest M seen and are reused.
/// </summary>
public sealed unsafe class Q8_0Rows
{
    private byte[] buffer = [];
    private byte[] scratch = [];

    /// <summary>Rows quantized by the last <see cref="Quantize"/>.</summary>
    public int M { get; private set; }

    /// <summary>Values per row.</summary>
    public int K { get; private set; }

    internal sbyte* Q;
    internal float* D;
    internal int* Bias;

    /// <summary>The int8 values of row <paramref name="row"/>.</summary>
    public ReadOnlySpan<sbyte> Values(int row) => new(Q + (long)row * K, K);

    /// <summary>The block scales of row <paramref name="row"/>.</summary>
    public ReadOnlySpan<float> Scales(int row) => new(D + (long)row * (K / 32), K / 32);

    /// <summary>
    /// Quantizes x [m, k] (row stride k) row by row as <see cref="QuantizedActivations"/> does (llama.cpp's
    /// quantize_row_q8_0; a block with a non-finite value gets zeros and a NaN scale), rows in parallel.
    /// </summary>
    public void Quantize(float* x, int m, int k)
    {
        Prepare(m, k);
        CpuParallel.For(m, 4L * k, (r0, r1) => QuantizeRows(x, k, r0, r1));
    }

    /// <summary>
    /// Sizes the buffers for <paramref name="m"/> rows of <paramref name="k"/> values (contents undefined until
    /// <see cref="QuantizeRows"/> fills them), for callers that quantize rows on their own threads.
    /// </summary>
    public void Prepare(int m, int k)
    {
        if (m <= 0 || k <= 0 || k % 32 != 0) throw new ArgumentException($"q8_0 rows: need M > 0 and K a positive multiple of 32, got {m} x {k}");
        int blocks = k / 32;
        long values = (long)m * k, need = 32 + values + 8L * m * blocks + 32;
        if (buffer.Length < need)
        {
            buffer = GC.AllocateUninitializedArray<byte>(checked((int)need), pinned: true);
            scratch = GC.AllocateUninitializedArray<byte>(checked(m * blocks * 34), pinned: true);
        }
        M = m;
        K = k;
        byte* b0 = (byte*)(((nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buffer)) + 31) & ~(nint)31);
        Q = (sbyte*)b0;
        D = (float*)(b0 + ((values + 31) & ~31L));
        Bias = (int*)(D + (long)m * blocks);
    }

    /// <summary>
    /// Quantizes rows [r0, r1) after <see cref="Prepare"/>: row r from x + r * <paramref name="ldx"/> (K values), as
    /// <see cref="QuantizedActivations"/> does (llama.cpp's quantize_row_q8_0; a block with a non-finite value gets
    /// zeros and a NaN scale). Disjoint ranges may run on different threads.
    /// </summary>
    public void QuantizeRows(float* x, long ldx, int r0, int r1)
    {
        if ((uint)r0 > (uint)r1 || r1 > M) throw new ArgumentOutOfRangeException(nameof(r1), $"rows [{r0}, {r1}) outside [0, {M})");
        int k = K, blocks = k / 32;
        byte* s = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(scratch));
        for (int r = r0; r < r1; r++)
            QuantizedActivations.QuantizeBlocksQ8_0(x + r * ldx, blocks, s + (long)r * blocks * 34, Q + (long)r * k, D + (long)r * blocks, Bias + (long)r * blocks);
    }
}
