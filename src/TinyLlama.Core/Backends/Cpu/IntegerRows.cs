// The fast integer mat-vec rows that decoding runs on: a row of block-quantized weights (Q4_0, Q8_0, Q4_K,
// Q6_K) times activations quantized once per mat-vec (QuantizedActivations below), in int8 arithmetic with one
// float scale multiply per block, as llama.cpp's ggml-cpu does it (ggml_vec_dot_q4_0_q8_0, _q8_0_q8_0,
// _q4_K_q8_K, _q6_K_q8_K; the formats are restated in Quantization/QuantType.cs).
//
// How this differs from IntegerDot.cs, its bit-exact sibling: IntegerDot reduces every block's int32 sum to a
// scalar and adds the blocks in the reference's order, so each path equals IntegerDotRef bit for bit; that
// horizontal sum per block made it slower than the f32 kernel. Here, as in ggml's SIMD loops, a block's eight
// int32 lane sums are converted to f32 and accumulated with FMAs in vector registers; the row is reduced once at
// its end. The integer sums are still exact; only the f32 rounding order differs from the reference (tests bound
// it against an f64 sum of the same integer terms).
//
// Per 32-weight block b of Q4_0 (nibbles u in 0..15, weight (u - 8) d_w) and Q8_0 activations (q, d_x):
//     sum_j (u_j - 8) q_j = sum_j u_j q_j - 8 sum_j q_j
// The first term is pmaddubsw (unsigned nibbles times signed bytes; pairs |.| <= 2 * 15 * 127) then pmaddwd
// with ones; the second depends on the activations only, so it is computed once per mat-vec, per int32 lane
// (lane i covers bytes 4i..4i+3), and added back: NegBias[b] = -8 (q_4i + ... + q_4i+3). With AVX-VNNI
// vpdpbusd takes NegBias as its accumulator, so the bias costs nothing per row. Then
//     acc += float(lanes) * (d_x broadcast) * d_w.
// Q8_0 weights (signed w, |w| <= 128) on AVX2 use ggml's sign trick: pmaddubsw(|w|, sign(q, w)); exact here
// because the activations come from the Q8_0 quantizer (|q| <= 127, so sign(q, w) never wraps) and pairs stay
// <= 2 * 128 * 127 < 32767. With AVX-VNNI: vpdpbusd(16 NegBias = -128 sums, w xor 0x80 (= w + 128), q).
//
// Q8_K activations (the K-quants' partner, ggml's block_q8_K): 256 values per super-block with an f32 scale
// d = 1 / (-127 / max), max the value of largest magnitude with its sign, q = round-half-even(x * -127 / max)
// capped at 127, and the 16 sums of 16 consecutive q ("bsums").
// Q6_K x Q8_K, per super-block: q6 in 0..63 is (ql nibble) | (qh 2 bits) << 4, weight d sc_g (q6 - 32) with
//     sum = sum_g sc_g (sum_{i in g} q6_i q_i) - 32 sum_g sc_g bsums_g,   result += d_w d_x sum
// (pmaddubsw pairs <= 2 * 63 * 127; pmaddwd with the pair's scale; the bias from bsums once per super-block).
// Q4_K x Q8_K: weight d sc_j u - dmin m_j over 8 sub-blocks of 32,
//     result += d_w d_x sum_j sc_j (sum u q) - dmin_w d_x sum_j m_j (bsums_2j + bsums_2j+1).
//
// binary16 scales are widened through a 65,536-entry table (as ggml does without F16C): one load per block,
// where the bit manipulation of QuantTypes.HalfToSingle is about eight scalar operations.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TinyLlama.Quantization;

namespace TinyLlama.Backends.Cpu;

/// <summary>
/// Activations x [K] quantized once for the rows of a mat-vec: Q8_0 (per 32 values) for Q4_0 / Q8_0 weights,
/// Q8_K (per 256) for Q4_K / Q6_K weights (see the file header). Buffers are allocated once; <see cref="Quantize(ReadOnlySpan{float}, bool, bool)"/>
/// overwrites them.
/// </summary>
public sealed unsafe class QuantizedActivations
{
    private readonly byte[] buffer;          // pinned (pinned object heap): every array below
    private readonly byte[] scratch;         // Q8_0 blocks as the quantizer writes them (34 bytes each)

    /// <summary>Buffers for <paramref name="k"/> activations (a positive multiple of 32).</summary>
    public QuantizedActivations(int k)
    {
        if (k <= 0 || k % 32 != 0) throw new ArgumentException($"quantized activations: K must be a positive multiple of 32, got {k}", nameof(k));
        K = k;
        int blocks = k / 32, superBlocks = k / 256;
        // Layout (each part 32-byte aligned): Q [K] sbyte, DV [blocks] Vector256<float>, NegBias [blocks]
        // Vector256<int>, D [blocks] float, Bias [blocks] int, QK [K] sbyte, DK [superBlocks] float, BSums [K / 16] short.
        long size = 32 + Align(k) + 32L * blocks * 2 + 2 * Align(4L * blocks) + Align(k) + Align(4L * superBlocks) + Align(2L * (k / 16));
        buffer = GC.AllocateArray<byte>(checked((int)size), pinned: true);
        scratch = GC.AllocateUninitializedArray<byte>(blocks * 34, pinned: true);
        byte* p = (byte*)(((nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buffer)) + 31) & ~(nint)31);
        Q = (sbyte*)p; p += Align(k);
        DV = (Vector256<float>*)p; p += 32L * blocks;
        NegBias = (Vector256<int>*)p; p += 32L * blocks;
        D = (float*)p; p += Align(4L * blocks);
        Bias = (int*)p; p += Align(4L * blocks);
        QK = (sbyte*)p; p += Align(k);
        DK = (float*)p; p += Align(4L * superBlocks);
        BSums = (short*)p;
    }

    private static long Align(long bytes) => (bytes + 31) & ~31L;

    /// <summary>K, the number of activations.</summary>
    public int K { get; }

    // Q8_0 form: int8 values [K], block scales [K / 32] (the binary16 d widened), the scales broadcast to 8
    // lanes, and per block the -8 x (sums of 4 consecutive values) lanes (file header).
    internal readonly sbyte* Q;
    internal readonly float* D;
    internal readonly Vector256<float>* DV;
    internal readonly Vector256<int>* NegBias;
    // -8 x (the sum of a block's 32 values), per block: the Q4_0 bias of the repacked rows (RepackedQ4_0.cs).
    internal readonly int* Bias;
    // Q8_K form: int8 values [K], f32 scales [K / 256], sums of 16 values [K / 16].
    internal readonly sbyte* QK;
    internal readonly float* DK;
    internal readonly short* BSums;

    /// <summary>The Q8_0 values of the last <see cref="Quantize(ReadOnlySpan{float}, bool, bool)"/> with <c>q8_0</c> set.</summary>
    public ReadOnlySpan<sbyte> Values => new(Q, K);

    /// <summary>The Q8_0 block scales (binary16 d widened to f32) of the last <see cref="Quantize(ReadOnlySpan{float}, bool, bool)"/>.</summary>
    public ReadOnlySpan<float> Scales => new(D, K / 32);

    /// <summary>The Q8_K values of the last <see cref="Quantize(ReadOnlySpan{float}, bool, bool)"/> with <c>q8K</c> set.</summary>
    public ReadOnlySpan<sbyte> ValuesK => new(QK, K);

    /// <summary>The Q8_K super-block scales.</summary>
    public ReadOnlySpan<float> ScalesK => new(DK, K / 256);

    /// <summary>The Q8_K sums of each 16 consecutive values.</summary>
    public ReadOnlySpan<short> BlockSumsK => new(BSums, K / 16);

    /// <summary>
    /// Quantizes x [K]: to Q8_0 (byte for byte llama.cpp's quantize_row_q8_0) when <paramref name="q8_0"/>, to
    /// Q8_K (quantize_row_q8_K) when <paramref name="q8K"/> (K a multiple of 256). A block holding a value that
    /// is not finite gets all-zero values and a NaN scale, so every row it meets comes out NaN (as the f32 path
    /// would), for the caller's non-finite check to report.
    /// </summary>
    public void Quantize(ReadOnlySpan<float> x, bool q8_0 = true, bool q8K = false)
    {
        if (x.Length != K) throw new ArgumentException($"quantized activations: {x.Length} values, expected K = {K}", nameof(x));
        if (q8K && K % 256 != 0) throw new ArgumentException($"quantized activations: Q8_K needs K a multiple of 256, got {K}", nameof(q8K));
        fixed (float* px = x) Quantize(px, q8_0, q8K);
    }

    /// <summary>Unchecked <see cref="Quantize(ReadOnlySpan{float}, bool, bool)"/>: x must hold K values.</summary>
    public void Quantize(float* x, bool q8_0, bool q8K)
    {
        if (q8_0) QuantizeQ8_0(x);
        if (q8K) QuantizeQ8_K(x);
    }

    private void QuantizeQ8_0(float* x)
    {
        int blocks = K / 32;
        fixed (byte* s = scratch) QuantizeBlocksQ8_0(x, blocks, s, Q, D, Bias);
        for (int b = 0; b < blocks; b++)
        {
            DV[b] = Vector256.Create(D[b]);
            NegBias[b] = NegativeBias(Q + b * 32);
        }
    }

    /// <summary>
    /// x [32 blocks] to Q8_0, byte for byte llama.cpp's quantize_row_q8_0, split into values q [32 blocks], widened
    /// scales d [blocks] and bias [blocks] = -8 sum(q) of each block; a block holding a non-finite value gets zeros
    /// and a NaN scale. <paramref name="scratch"/>: 34 bytes a block.
    /// </summary>
    internal static void QuantizeBlocksQ8_0(float* x, int blocks, byte* scratch, sbyte* q, float* d, int* bias)
    {
        if (Avx2.IsSupported && IntegerDot.QuantizeSplitQ8_0Avx2(x, blocks, q, d, bias)) return;
        for (int b = 0; b < blocks; b++)
        {
            var values = new ReadOnlySpan<float>(x + b * 32, 32);
            var block = new Span<byte>(scratch + b * 34, 34);
            if (AllFinite(values))
            {
                QuantTypes.QuantizeRowQ8_0(values, block);
                d[b] = QuantTypes.HalfToSingle(*(ushort*)(scratch + b * 34));
            }
            else
            {
                block.Clear();
                d[b] = float.NaN;
            }
            sbyte* qb = q + b * 32;
            Buffer.MemoryCopy(scratch + b * 34 + 2, qb, 32, 32);
            int sum = 0;
            for (int j = 0; j < 32; j++) sum += qb[j];
            bias[b] = -8 * sum;
        }
    }

    private static bool AllFinite(ReadOnlySpan<float> values)
    {
        foreach (float v in values) if (!float.IsFinite(v)) return false;
        return true;
    }

    // Lane i: -8 (q[4i] + q[4i+1] + q[4i+2] + q[4i+3]).
    private static Vector256<int> NegativeBias(sbyte* q)
    {
        if (Avx2.IsSupported)
        {
            var pairs = Avx2.MultiplyAddAdjacent(Vector256.Create((byte)8), Avx.LoadVector256(q));
            return Avx2.Subtract(Vector256<int>.Zero, Avx2.MultiplyAddAdjacent(pairs, Vector256.Create((short)1)));
        }
        Span<int> lanes = stackalloc int[8];
        for (int i = 0; i < 8; i++) lanes[i] = -8 * (q[4 * i] + q[4 * i + 1] + q[4 * i + 2] + q[4 * i + 3]);
        return Vector256.Create<int>(lanes);
    }

    // ggml's quantize_row_q8_K_ref, restated: per 256 values, max = the value of largest magnitude (first one on
    // ties), iscale = -127 / max, q = min(127, round-half-even(iscale x)), d = 1 / iscale, bsums of 16.
    private void QuantizeQ8_K(float* x)
    {
        for (int sb = 0; sb < K / 256; sb++)
        {
            float* v = x + sb * 256;
            sbyte* q = QK + sb * 256;
            float max = 0, amax = 0;
            bool finite = true;
            for (int j = 0; j < 256; j++)
            {
                float a = MathF.Abs(v[j]);
                if (!float.IsFinite(a)) finite = false;
                if (a > amax) { amax = a; max = v[j]; }
            }
            if (!finite || amax == 0)
            {
                DK[sb] = finite ? 0 : float.NaN;
                new Span<sbyte>(q, 256).Clear();
                new Span<short>(BSums + sb * 16, 16).Clear();
                continue;
            }
            float iscale = -127f / max;
            for (int j = 0; j < 256; j++) q[j] = (sbyte)Math.Min(127, (int)MathF.Round(iscale * v[j]));
            for (int g = 0; g < 16; g++)
            {
                int s = 0;
                for (int j = 0; j < 16; j++) s += q[16 * g + j];
                BSums[sb * 16 + g] = (short)s;
            }
            DK[sb] = 1 / iscale;
        }
    }
}

/// <summary>
/// Dot products of one row of block-quantized weights with <see cref="QuantizedActivations"/> in integer
/// arithmetic (see the file header): the decoding mat-vec of llama.cpp, on AVX-VNNI, AVX2 or scalar paths.
/// </summary>
public static unsafe class IntegerRows
{
    private const int Q4Bytes = 18, Q8Bytes = 34, Q4KBytes = 144, Q6KBytes = 210;

    // Software prefetch distance of the row loops (bytes ahead of the block being read): the hardware prefetcher
    // alone left decoding of a 0.6 GB model at ~80% of the measured read bandwidth (RESULTS.md, session 6).
    private const int PrefetchAhead = 2048;

    // binary16 bits -> f32 for every bit pattern (65,536 entries, 256 KiB, pinned).
    private static readonly float[] HalfTableArray = BuildHalfTable();
    private static readonly float* HalfTable = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(HalfTableArray));

    private static float[] BuildHalfTable()
    {
        var table = GC.AllocateUninitializedArray<float>(65536, pinned: true);
        for (int i = 0; i < table.Length; i++) table[i] = QuantTypes.HalfToSingle((ushort)i);
        return table;
    }

    /// <summary>Whether <paramref name="type"/> has an integer row here (Q4_0, Q8_0, Q4_K, Q6_K).</summary>
    public static bool Supports(QuantType type) => type is QuantType.Q4_0 or QuantType.Q8_0 or QuantType.Q4_K or QuantType.Q6_K;

    /// <summary>Whether rows of <paramref name="type"/> read the Q8_K form of the activations (K-quants) rather than Q8_0.</summary>
    public static bool UsesQ8K(QuantType type) => type is QuantType.Q4_K or QuantType.Q6_K;

    /// <summary>
    /// dot(row, x) for one row of K = a.K weights in <paramref name="type"/>'s blocks and the activations as
    /// quantized last (the form <see cref="UsesQ8K"/> names must have been produced).
    /// </summary>
    public static float Dot(QuantType type, ReadOnlySpan<byte> row, QuantizedActivations a, IntegerDotPath path = IntegerDotPath.Auto)
    {
        if (!Supports(type)) throw new ArgumentException($"integer rows: {type.Traits().Name} has no integer dot product", nameof(type));
        var traits = type.Traits();
        if (a.K % traits.BlockSize != 0 || row.Length != traits.RowBytes(a.K))
            throw new ArgumentException($"integer rows: {row.Length} bytes of {traits.Name} do not hold K = {a.K} weights", nameof(row));
        if (path == IntegerDotPath.Auto) path = BestPath;
        else if (!IntegerDot.IsSupported(path) || path != IntegerDotPath.Scalar && !Fma.IsSupported) throw new ArgumentException($"path: {path} is not supported on this CPU (supported up to {IntegerDot.Best})", nameof(path));
        fixed (byte* w = row) return Dot(type, w, a, path);
    }

    /// <summary>Unchecked <see cref="Dot(QuantType, ReadOnlySpan{byte}, QuantizedActivations, IntegerDotPath)"/> on this CPU's best path.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(QuantType type, byte* row, QuantizedActivations a) => Dot(type, row, a, BestPath);

    // The AVX2 and AVX-VNNI rows accumulate with FMA (every AVX2 CPU has it; checked anyway).
    private static readonly IntegerDotPath BestPath = Fma.IsSupported ? IntegerDot.Best : IntegerDotPath.Scalar;

    private static float Dot(QuantType type, byte* w, QuantizedActivations a, IntegerDotPath path)
    {
        bool vnni = path == IntegerDotPath.AvxVnni, avx2 = path == IntegerDotPath.Avx2;
        return type switch
        {
            QuantType.Q4_0 => vnni ? RowQ8Acts<VnniQ4>(w, a) : avx2 ? RowQ8Acts<Avx2Q4>(w, a) : ScalarQ4_0(w, a),
            QuantType.Q8_0 => vnni ? RowQ8Acts<VnniQ8>(w, a) : avx2 ? RowQ8Acts<Avx2Q8>(w, a) : ScalarQ8_0(w, a),
            QuantType.Q6_K => vnni || avx2 ? RowQ6_KAvx2(w, a) : ScalarQ6_K(w, a),
            QuantType.Q4_K => vnni || avx2 ? RowQ4_KAvx2(w, a) : ScalarQ4_K(w, a),
            _ => throw new ArgumentException($"integer rows: {type} has no integer dot product"),
        };
    }

    // ---------------------------------------------------------------- Q4_0 and Q8_0 (Q8_0 activations)

    /// <summary>One weight format on one instruction set: a block's eight exact int32 lane sums (lane i: bytes 4i..4i+3).</summary>
    private interface ILaneSums
    {
        static abstract int BlockBytes { get; }
        // low4: 0x0F in every byte; ones: 1 in every int16 (hoisted by the caller: the JIT re-creates such
        // constants inside the loop otherwise, two instructions a block).
        static abstract Vector256<int> Sums(byte* w, sbyte* q, Vector256<int> negBias, Vector128<byte> low4, Vector256<short> ones);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Nibbles(byte* w, Vector128<byte> low4)
    {
        var q = Sse2.LoadVector128(w + 2);
        return Vector256.Create(Sse2.And(q, low4), Sse2.And(Sse2.ShiftRightLogical(q.AsUInt16(), 4).AsByte(), low4));
    }

    private readonly struct Avx2Q4 : ILaneSums
    {
        public static int BlockBytes => Q4Bytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Sums(byte* w, sbyte* q, Vector256<int> negBias, Vector128<byte> low4, Vector256<short> ones) =>
            Avx2.Add(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Nibbles(w, low4), Avx.LoadVector256(q)), ones), negBias);
    }

    private readonly struct Avx2Q8 : ILaneSums
    {
        public static int BlockBytes => Q8Bytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Sums(byte* w, sbyte* q, Vector256<int> negBias, Vector128<byte> low4, Vector256<short> ones)
        {
            var wv = Avx.LoadVector256((sbyte*)(w + 2));
            var pairs = Avx2.MultiplyAddAdjacent(Avx2.Sign(wv, wv).AsByte(), Avx2.Sign(Avx.LoadVector256(q), wv));
            return Avx2.MultiplyAddAdjacent(pairs, ones);
        }
    }

    private readonly struct VnniQ4 : ILaneSums
    {
        public static int BlockBytes => Q4Bytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Sums(byte* w, sbyte* q, Vector256<int> negBias, Vector128<byte> low4, Vector256<short> ones) =>
            AvxVnni.MultiplyWideningAndAdd(negBias, Nibbles(w, low4), Avx.LoadVector256(q));
    }

    private readonly struct VnniQ8 : ILaneSums
    {
        public static int BlockBytes => Q8Bytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Sums(byte* w, sbyte* q, Vector256<int> negBias, Vector128<byte> low4, Vector256<short> ones) =>
            AvxVnni.MultiplyWideningAndAdd(Avx2.ShiftLeftLogical(negBias, 4), Avx2.Xor(Avx.LoadVector256(w + 2), Vector256.Create((byte)0x80)), Avx.LoadVector256(q));
    }

    // A Q4_0 or Q8_0 row: two accumulators (even and odd blocks) hide the FMA latency; one reduction per row.
    // Pointers advance block by block (no index arithmetic in the loop).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float RowQ8Acts<T>(byte* w, QuantizedActivations a) where T : struct, ILaneSums
    {
        int size = T.BlockBytes;
        float* table = HalfTable;
        sbyte* q = a.Q;
        Vector256<float>* dv = a.DV;
        Vector256<int>* bias = a.NegBias;
        byte* end = w + (long)(a.K / 32) * size, pairsEnd = w + (long)(a.K / 64) * 2 * size;
        var low4 = Vector128.Create((byte)0x0F);
        var ones = Vector256.Create((short)1);
        Vector256<float> acc0 = Vector256<float>.Zero, acc1 = acc0;
        for (; w < pairsEnd; w += 2 * size, q += 64, dv += 2, bias += 2)
        {
            Sse.Prefetch0(w + PrefetchAhead);
            Sse.Prefetch0(w + PrefetchAhead + 64);
            var s0 = T.Sums(w, q, bias[0], low4, ones);
            var s1 = T.Sums(w + size, q + 32, bias[1], low4, ones);
            acc0 = Fma.MultiplyAdd(Avx.Multiply(Avx.ConvertToVector256Single(s0), dv[0]), Vector256.Create(table[*(ushort*)w]), acc0);
            acc1 = Fma.MultiplyAdd(Avx.Multiply(Avx.ConvertToVector256Single(s1), dv[1]), Vector256.Create(table[*(ushort*)(w + size)]), acc1);
        }
        if (w < end)
            acc0 = Fma.MultiplyAdd(Avx.Multiply(Avx.ConvertToVector256Single(T.Sums(w, q, bias[0], low4, ones)), dv[0]), Vector256.Create(table[*(ushort*)w]), acc0);
        return Vector256.Sum(Avx.Add(acc0, acc1));
    }

    private static float ScalarQ4_0(byte* w, QuantizedActivations a)
    {
        float sum = 0;
        for (int b = 0; b < a.K / 32; b++, w += Q4Bytes)
        {
            sbyte* q = a.Q + 32 * b;
            int s = 0;
            for (int j = 0; j < 16; j++) s += ((w[2 + j] & 0x0F) - 8) * q[j] + ((w[2 + j] >> 4) - 8) * q[j + 16];
            sum += s * a.D[b] * HalfTable[*(ushort*)w];
        }
        return sum;
    }

    private static float ScalarQ8_0(byte* w, QuantizedActivations a)
    {
        float sum = 0;
        for (int b = 0; b < a.K / 32; b++, w += Q8Bytes)
        {
            sbyte* q = a.Q + 32 * b;
            int s = 0;
            for (int j = 0; j < 32; j++) s += (sbyte)w[2 + j] * q[j];
            sum += s * a.D[b] * HalfTable[*(ushort*)w];
        }
        return sum;
    }

    // ---------------------------------------------------------------- Q6_K and Q4_K (Q8_K activations)

    // pshufb masks putting int16 lane (2t) of a 128-bit half in lanes 0..7 and lane (2t + 1) in lanes 8..15
    // (both halves of the source hold the same eight scales).
    private static readonly Vector256<byte>[] ScalePairMasks = BuildScalePairMasks();

    private static Vector256<byte>[] BuildScalePairMasks()
    {
        var masks = new Vector256<byte>[4];
        Span<byte> m = stackalloc byte[32];
        for (int t = 0; t < 4; t++)
        {
            for (int i = 0; i < 16; i += 2)
            {
                m[i] = (byte)(4 * t); m[i + 1] = (byte)(4 * t + 1);
                m[16 + i] = (byte)(4 * t + 2); m[16 + i + 1] = (byte)(4 * t + 3);
            }
            masks[t] = Vector256.Create<byte>(m);
        }
        return masks;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float RowQ6_KAvx2(byte* w, QuantizedActivations a)
    {
        var low4 = Vector256.Create((byte)0x0F);
        var bits45 = Vector256.Create((byte)0x30);
        var masks = ScalePairMasks;
        var acc = Vector256<float>.Zero;
        for (int sb = 0; sb < a.K / 256; sb++, w += Q6KBytes)
        {
            for (int line = 0; line < Q6KBytes; line += 64) Sse.Prefetch0(w + PrefetchAhead + line);
            byte* ql = w, qh = w + 128;
            sbyte* sc = (sbyte*)(w + 192);
            sbyte* q = a.QK + 256 * sb;
            var scales = Avx2.ConvertToVector256Int16(Sse2.LoadVector128(sc));   // 16 scales as int16
            var isum = Vector256<int>.Zero;
            for (int h = 0; h < 2; h++)
            {
                var eight = h == 0 ? scales.GetLower() : scales.GetUpper();
                var half = Vector256.Create(eight, eight).AsByte();
                var l0 = Avx.LoadVector256(ql + 64 * h);
                var l1 = Avx.LoadVector256(ql + 64 * h + 32);
                var hb = Avx.LoadVector256(qh + 32 * h);
                // The four quarters of 32: low bits, and the qh bit pair (2t, 2t+1) moved to bits 4-5.
                var q0 = Avx2.Or(Avx2.And(l0, low4), Avx2.And(Avx2.ShiftLeftLogical(hb.AsUInt16(), 4).AsByte(), bits45));
                var q1 = Avx2.Or(Avx2.And(l1, low4), Avx2.And(Avx2.ShiftLeftLogical(hb.AsUInt16(), 2).AsByte(), bits45));
                var q2 = Avx2.Or(Avx2.And(Avx2.ShiftRightLogical(l0.AsUInt16(), 4).AsByte(), low4), Avx2.And(hb, bits45));
                var q3 = Avx2.Or(Avx2.And(Avx2.ShiftRightLogical(l1.AsUInt16(), 4).AsByte(), low4), Avx2.And(Avx2.ShiftRightLogical(hb.AsUInt16(), 2).AsByte(), bits45));
                sbyte* x = q + 128 * h;
                isum = Avx2.Add(isum, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q0, Avx.LoadVector256(x)), Avx2.Shuffle(half, masks[0]).AsInt16()));
                isum = Avx2.Add(isum, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q1, Avx.LoadVector256(x + 32)), Avx2.Shuffle(half, masks[1]).AsInt16()));
                isum = Avx2.Add(isum, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q2, Avx.LoadVector256(x + 64)), Avx2.Shuffle(half, masks[2]).AsInt16()));
                isum = Avx2.Add(isum, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(q3, Avx.LoadVector256(x + 96)), Avx2.Shuffle(half, masks[3]).AsInt16()));
            }
            // sum_g sc_g bsums_g: 16 products in 8 int32 lanes, taken 32 times from the lanes' sums; the lanes stay
            // apart until the row's end (one horizontal sum per row, not two per super-block).
            var bias = Avx2.MultiplyAddAdjacent(scales, Avx.LoadVector256(a.BSums + 16 * sb));
            var total = Avx2.Subtract(isum, Avx2.ShiftLeftLogical(bias, 5));
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(total), Vector256.Create(HalfTable[*(ushort*)(w + 208)] * a.DK[sb]), acc);
        }
        return Vector256.Sum(acc);
    }

    private static float ScalarQ6_K(byte* w, QuantizedActivations a)
    {
        float sum = 0;
        for (int sb = 0; sb < a.K / 256; sb++, w += Q6KBytes)
        {
            for (int line = 0; line < Q6KBytes; line += 64) Sse.Prefetch0(w + PrefetchAhead + line);
            byte* ql = w, qh = w + 128;
            sbyte* sc = (sbyte*)(w + 192);
            sbyte* q = a.QK + 256 * sb;
            int isum = 0;
            for (int h = 0; h < 2; h++)
                for (int t = 0; t < 4; t++)
                    for (int l = 0; l < 32; l++)
                    {
                        int low = ql[64 * h + l + 32 * (t & 1)];
                        low = t < 2 ? low & 0x0F : low >> 4;
                        int q6 = (low | (((qh[32 * h + l] >> (2 * t)) & 3) << 4)) - 32;
                        isum += sc[8 * h + l / 16 + 2 * t] * q6 * q[128 * h + 32 * t + l];
                    }
            sum += HalfTable[*(ushort*)(w + 208)] * a.DK[sb] * isum;
        }
        return sum;
    }

    // The 8 six-bit scales and mins of a Q4_K super-block, by the format's one unpacking rule (QuantTypes.ScaleMinQ4_K).
    private static void ScalesMins(byte* s, int* sc, int* m)
    {
        var packed = new ReadOnlySpan<byte>(s, 12);
        for (int i = 0; i < 8; i++) (sc[i], m[i]) = QuantTypes.ScaleMinQ4_K(i, packed);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float RowQ4_KAvx2(byte* w, QuantizedActivations a)
    {
        var low4 = Vector256.Create((byte)0x0F);
        int* sc = stackalloc int[8], m = stackalloc int[8];
        float sum = 0;
        for (int sb = 0; sb < a.K / 256; sb++, w += Q4KBytes)
        {
            ScalesMins(w + 4, sc, m);
            sbyte* q = a.QK + 256 * sb;
            var isum = Vector256<int>.Zero;
            for (int p = 0; p < 4; p++)
            {
                var bytes = Avx.LoadVector256(w + 16 + 32 * p);
                var lo = Avx2.MultiplyAddAdjacent(Avx2.And(bytes, low4), Avx.LoadVector256(q + 64 * p));
                var hi = Avx2.MultiplyAddAdjacent(Avx2.And(Avx2.ShiftRightLogical(bytes.AsUInt16(), 4).AsByte(), low4), Avx.LoadVector256(q + 64 * p + 32));
                isum = Avx2.Add(isum, Avx2.MultiplyAddAdjacent(lo, Vector256.Create((short)sc[2 * p])));
                isum = Avx2.Add(isum, Avx2.MultiplyAddAdjacent(hi, Vector256.Create((short)sc[2 * p + 1])));
            }
            short* bs = a.BSums + 16 * sb;
            int mins = 0;
            for (int j = 0; j < 8; j++) mins += m[j] * (bs[2 * j] + bs[2 * j + 1]);
            float dx = a.DK[sb];
            sum += HalfTable[*(ushort*)w] * dx * Vector256.Sum(isum) - HalfTable[*(ushort*)(w + 2)] * dx * mins;
        }
        return sum;
    }

    private static float ScalarQ4_K(byte* w, QuantizedActivations a)
    {
        int* sc = stackalloc int[8], m = stackalloc int[8];
        float sum = 0;
        for (int sb = 0; sb < a.K / 256; sb++, w += Q4KBytes)
        {
            ScalesMins(w + 4, sc, m);
            sbyte* q = a.QK + 256 * sb;
            int isum = 0, mins = 0;
            for (int p = 0; p < 4; p++)
                for (int l = 0; l < 32; l++)
                {
                    byte u = w[16 + 32 * p + l];
                    isum += sc[2 * p] * (u & 0x0F) * q[64 * p + l] + sc[2 * p + 1] * (u >> 4) * q[64 * p + 32 + l];
                }
            for (int j = 0; j < 8; j++) mins += m[j] * (a.BSums[16 * sb + 2 * j] + a.BSums[16 * sb + 2 * j + 1]);
            float dx = a.DK[sb];
            sum += HalfTable[*(ushort*)w] * dx * isum - HalfTable[*(ushort*)(w + 2)] * dx * mins;
        }
        return sum;
    }
}
