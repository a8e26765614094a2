// llama.cpp-style integer dot products on the CPU: activations quantized to Q8_0, then dotted with Q4_0 or
// Q8_0 weight rows in int8 arithmetic with one scale multiply per block (ggml-cpu: quantize_row_q8_0,
// ggml_vec_dot_q4_0_q8_0, ggml_vec_dot_q8_0_q8_0). Definition: Quantization/IntegerDotRef.cs. These are the
// bit-exact forms (each path equals the reference's float bit for bit), for tests and for learners; the
// decoder runs their fast sibling, IntegerRows.cs, which accumulates in f32 vectors as ggml's SIMD loops do.
//
// Two phases per row, so every path gives the reference's float bit for bit:
//   1. per block, the exact int32 sum sumi_b (the only part that differs between paths);
//   2. the reference's float loop over blocks in order (IntegerDotRef: ((float)sumi * d_w) * d_x for Q4_0,
//      (float)sumi * (d_w * d_x) for Q8_0). ggml's SIMD loops instead convert each block's sums to float
//      vectors and accumulate with FMAs, which reorders the rounding; we keep the scalar order.
//
// Paths (IntegerDotPath):
//   Scalar   the reference's block sums.
//   Avx2     Q4_0: pmaddubsw (unsigned x signed bytes -> int16 pairs) on the UNBIASED nibbles 0..15 times x,
//            minus pmaddubsw(8, x), then pmaddwd with ones -> 8 int32, summed. ggml instead subtracts 8 first
//            and uses the sign trick (|w| via psignb(w, w), x via psignb(x, w)); that breaks on x = -128 with
//            w < 0 (psignb(-128) wraps to -128), which the quantizer never produces but a raw row may hold.
//            Our form needs no sign ops, and 8 * sum(x) depends on x only (a mat-vec could compute it once).
//            No saturation: a pmaddubsw pair is u0 x0 + u1 x1 with u <= 15, |x| <= 128, so |.| <= 3840, and
//            the bias pair is <= 2 * 8 * 128 = 2048 (< 32767); their difference is (u0-8) x0 + (u1-8) x1,
//            |.| <= 2048, still int16.
//            Q8_0: both operands signed, so pmaddubsw does not apply without a bias that could saturate
//            ((w + 128) x pairs reach 2 * 255 * 128 = 65280) or the sign trick (wrong at -128 on both sides);
//            the bytes are sign-extended to int16 (vpmovsxbw) and multiplied with pmaddwd: pairs are at most
//            2 * 128 * 128 = 32768, exact in int32.
//   AvxVnni  vpdpbusd (AvxVnni.MultiplyWideningAndAdd: unsigned bytes x signed bytes, four products summed
//            into each int32 lane, no saturation in this form). Q4_0: dpbusd(nibbles, x) - dpbusd(8, x).
//            Q8_0: dpbusd(w xor 0x80 = w + 128 as unsigned, x) - dpbusd(128, x). Both exact in int32.
// AVX-512 VNNI: .NET 10 exposes no Avx512Vnni class (System.Runtime.Intrinsics.X86 has AvxVnni, AvxVnniInt8,
// AvxVnniInt16 and Avx10v1/v2; 512-bit vpdpbusd is not among them), so there is no 512-bit path here.
// AvxVnniInt8 (AVX10.2 / Arrow Lake: signed x signed vpdpbssd) would simplify Q8_0 x Q8_0; not done yet.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TinyLlama.Quantization;

namespace TinyLlama.Backends.Cpu;

/// <summary>Instruction-set path of <see cref="IntegerDot"/>.</summary>
public enum IntegerDotPath
{
    /// <summary>The widest path this CPU supports.</summary>
    Auto,
    /// <summary>Plain loops (the reference's block sums).</summary>
    Scalar,
    /// <summary>AVX2: pmaddubsw / pmaddwd.</summary>
    Avx2,
    /// <summary>AVX-VNNI (256-bit vpdpbusd).</summary>
    AvxVnni,
}

/// <summary>Q8_0 activation quantization and integer dot products of Q4_0 / Q8_0 rows with Q8_0 activations.</summary>
public static unsafe class IntegerDot
{
    private const int Q4Bytes = 18, Q8Bytes = 34;

    /// <summary>Whether this CPU (and .NET) can run <paramref name="path"/>.</summary>
    public static bool IsSupported(IntegerDotPath path) => path switch
    {
        IntegerDotPath.Auto or IntegerDotPath.Scalar => true,
        IntegerDotPath.Avx2 => Avx2.IsSupported,
        IntegerDotPath.AvxVnni => AvxVnni.IsSupported && Avx2.IsSupported,
        _ => false,
    };

    /// <summary>The path <see cref="IntegerDotPath.Auto"/> takes on this CPU.</summary>
    public static IntegerDotPath Best =>
        IsSupported(IntegerDotPath.AvxVnni) ? IntegerDotPath.AvxVnni : IsSupported(IntegerDotPath.Avx2) ? IntegerDotPath.Avx2 : IntegerDotPath.Scalar;

    // ---------------------------------------------------------------- activations

    /// <summary>
    /// Quantizes x (a multiple of 32 finite values) into Q8_0 blocks, byte for byte as
    /// <see cref="QuantTypes.QuantizeRowQ8_0"/> (ggml's quantize_row_q8_0_ref); AVX2 where available.
    /// </summary>
    public static void QuantizeRowQ8_0(ReadOnlySpan<float> x, Span<byte> blocks)
    {
        if (!Avx2.IsSupported) { QuantTypes.QuantizeRowQ8_0(x, blocks); return; }
        if (x.Length % 32 != 0 || blocks.Length != x.Length / 32 * Q8Bytes)
            throw new ArgumentException($"q8_0: {x.Length} values and {blocks.Length} bytes do not match (32 values per {Q8Bytes}-byte block)");
        fixed (float* px = x)
        fixed (byte* pb = blocks)
        {
            if (!QuantizeRowQ8_0Avx2(px, pb, x.Length / 32))
                QuantTypes.QuantizeRowQ8_0(x, blocks);    // a non-finite value: the reference throws its one-line error
        }
    }

    /// <summary>
    /// The AVX2 body of <see cref="QuantizeRowQ8_0"/>; false (blocks partly written) if a value is not finite.
    /// Same operations as the reference: amax is a max (order-free), d = amax / 127 and id = 1 / d in scalar
    /// f32, q = x * id in f32 lanes (the same IEEE product), then round half away from zero done exactly:
    /// t = trunc(q), f = q - t (exact: the fraction of q, |q| &lt;= 127.5 &lt; 2^23), q = t + sign(q) if |f| >= 0.5.
    /// (Adding 0.5 and truncating would be wrong: 0.49999997 + 0.5 rounds up to 1.)
    /// </summary>
    internal static bool QuantizeRowQ8_0Avx2(float* x, byte* blocks, int count)
    {
        for (int b = 0; b < count; b++, x += 32, blocks += Q8Bytes)
        {
            if (!QuantizeBlockAvx2(x, out ushort d, out var q, out _)) return false;
            *(ushort*)blocks = d;                                      // unaligned: blocks are 34 bytes
            Avx.Store(blocks + 2, q.AsByte());
        }
        return true;
    }

    /// <summary>
    /// <see cref="QuantizeRowQ8_0Avx2"/> into separate arrays: values q [32 count], scales d [count] (the binary16
    /// scale widened) and bias [count] = -8 x the block's sum of values; false (partly written) if a value is not finite.
    /// </summary>
    internal static bool QuantizeSplitQ8_0Avx2(float* x, int count, sbyte* q, float* d, int* bias)
    {
        for (int b = 0; b < count; b++, x += 32, q += 32)
        {
            if (!QuantizeBlockAvx2(x, out ushort half, out var values, out int sum)) return false;
            Avx.Store(q, values);
            d[b] = QuantTypes.HalfToSingle(half);
            bias[b] = -8 * sum;
        }
        return true;
    }

    // One block of 32 values (see QuantizeRowQ8_0Avx2): its binary16 scale, its values in order and their sum.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool QuantizeBlockAvx2(float* x, out ushort d, out Vector256<sbyte> q, out int sum)
    {
        var signMask = Vector256.Create(-0.0f);
        var half = Vector256.Create(0.5f);
        var one = Vector256.Create(1.0f);
        var exponent = Vector256.Create(0x7F800000);
        var v0 = Avx.LoadVector256(x); var v1 = Avx.LoadVector256(x + 8);
        var v2 = Avx.LoadVector256(x + 16); var v3 = Avx.LoadVector256(x + 24);
        // Not finite = all exponent bits set.
        var e = Avx2.Or(Avx2.Or(Avx2.CompareEqual(Avx2.And(v0.AsInt32(), exponent), exponent), Avx2.CompareEqual(Avx2.And(v1.AsInt32(), exponent), exponent)),
                        Avx2.Or(Avx2.CompareEqual(Avx2.And(v2.AsInt32(), exponent), exponent), Avx2.CompareEqual(Avx2.And(v3.AsInt32(), exponent), exponent)));
        if (!Avx.TestZ(e, e))
        {
            d = 0; q = default; sum = 0;
            return false;
        }
        // amax: lanes are finite and non-negative, so the max is exact in any order (the reference's loop order).
        var m = Avx.Max(Avx.Max(Avx.AndNot(signMask, v0), Avx.AndNot(signMask, v1)), Avx.Max(Avx.AndNot(signMask, v2), Avx.AndNot(signMask, v3)));
        var m4 = Sse.Max(m.GetLower(), m.GetUpper());
        m4 = Sse.Max(m4, Sse.Shuffle(m4, m4, 0x4E));
        float amax = Sse.Max(m4, Sse.Shuffle(m4, m4, 0xB1)).ToScalar();
        float scale = amax / 127f;
        float id = scale != 0 ? 1f / scale : 0f;
        d = QuantTypes.SingleToHalfBits(scale);
        var vid = Vector256.Create(id);
        var i0 = RoundAway(Avx.Multiply(v0, vid), signMask, half, one);
        var i1 = RoundAway(Avx.Multiply(v1, vid), signMask, half, one);
        var i2 = RoundAway(Avx.Multiply(v2, vid), signMask, half, one);
        var i3 = RoundAway(Avx.Multiply(v3, vid), signMask, half, one);
        var s = Avx2.Add(Avx2.Add(i0, i1), Avx2.Add(i2, i3));
        var s4 = Sse2.Add(s.GetLower(), s.GetUpper());
        s4 = Sse2.Add(s4, Sse2.Shuffle(s4, 0x4E));
        sum = Sse2.Add(s4, Sse2.Shuffle(s4, 0xB1)).ToScalar();
        // packssdw / packsswb work within 128-bit lanes: the dwords come out as (i0 0..3, i1 0..3, i2 0..3,
        // i3 0..3, i0 4..7, ...); the permute puts them back in order. |q| <= 127 so nothing saturates.
        var packed = Avx2.PackSignedSaturate(Avx2.PackSignedSaturate(i0, i1), Avx2.PackSignedSaturate(i2, i3));
        q = Avx2.PermuteVar8x32(packed.AsInt32(), Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7)).AsSByte();
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> RoundAway(Vector256<float> q, Vector256<float> signMask, Vector256<float> half, Vector256<float> one)
    {
        var t = Avx.RoundToZero(q);
        var f = Avx.AndNot(signMask, Avx.Subtract(q, t));
        var step = Avx.Or(Avx.And(q, signMask), one);                                  // +-1 with q's sign
        var r = Avx.Add(t, Avx.And(Avx.CompareGreaterThanOrEqual(f, half), step));
        return Avx.ConvertToVector256Int32WithTruncation(r);
    }

    // ---------------------------------------------------------------- dot products (checked, spans)

    /// <summary>
    /// dot(w, x): a row of Q4_0 weight blocks with as many Q8_0 activation blocks, equal bit for bit to
    /// <see cref="IntegerDotRef.DotQ4_0Q8_0"/> on every path.
    /// </summary>
    public static float DotQ4_0Q8_0(ReadOnlySpan<byte> w, ReadOnlySpan<byte> x, IntegerDotPath path = IntegerDotPath.Auto)
    {
        IntegerDotRef.CheckRows(QuantType.Q4_0, w, x);
        fixed (byte* pw = w) fixed (byte* px = x) return DotQ4_0Q8_0(pw, px, w.Length / Q4Bytes, Resolve(path));
    }

    /// <summary>dot(w, x): a row of Q8_0 weight blocks with as many Q8_0 activation blocks (as <see cref="IntegerDotRef.DotQ8_0Q8_0"/>).</summary>
    public static float DotQ8_0Q8_0(ReadOnlySpan<byte> w, ReadOnlySpan<byte> x, IntegerDotPath path = IntegerDotPath.Auto)
    {
        IntegerDotRef.CheckRows(QuantType.Q8_0, w, x);
        fixed (byte* pw = w) fixed (byte* px = x) return DotQ8_0Q8_0(pw, px, w.Length / Q8Bytes, Resolve(path));
    }

    /// <summary>sums [blocks] = the exact int32 sum of each block pair of a Q4_0 row and Q8_0 activations.</summary>
    public static void BlockSumsQ4_0Q8_0(ReadOnlySpan<byte> w, ReadOnlySpan<byte> x, Span<int> sums, IntegerDotPath path = IntegerDotPath.Auto)
    {
        IntegerDotRef.CheckRows(QuantType.Q4_0, w, x);
        int blocks = w.Length / Q4Bytes;
        if (sums.Length != blocks) throw new ArgumentException($"sums: {sums.Length} values, expected one per block ({blocks})", nameof(sums));
        fixed (byte* pw = w) fixed (byte* px = x)
            for (int b = 0; b < blocks; b++) sums[b] = SumQ4(pw + b * Q4Bytes, px + b * Q8Bytes, Resolve(path));
    }

    /// <summary>sums [blocks] = the exact int32 sum of each block pair of a Q8_0 row and Q8_0 activations.</summary>
    public static void BlockSumsQ8_0Q8_0(ReadOnlySpan<byte> w, ReadOnlySpan<byte> x, Span<int> sums, IntegerDotPath path = IntegerDotPath.Auto)
    {
        IntegerDotRef.CheckRows(QuantType.Q8_0, w, x);
        int blocks = w.Length / Q8Bytes;
        if (sums.Length != blocks) throw new ArgumentException($"sums: {sums.Length} values, expected one per block ({blocks})", nameof(sums));
        fixed (byte* pw = w) fixed (byte* px = x)
            for (int b = 0; b < blocks; b++) sums[b] = SumQ8(pw + b * Q8Bytes, px + b * Q8Bytes, Resolve(path));
    }

    private static IntegerDotPath Resolve(IntegerDotPath path)
    {
        if (path == IntegerDotPath.Auto) return Best;
        if (!IsSupported(path)) throw new ArgumentException($"path: {path} is not supported on this CPU (supported up to {Best})", nameof(path));
        return path;
    }

    private static int SumQ4(byte* w, byte* x, IntegerDotPath path) => path switch
    {
        IntegerDotPath.AvxVnni => AvxVnniKernel.SumQ4(w, x),
        IntegerDotPath.Avx2 => Avx2Kernel.SumQ4(w, x),
        _ => ScalarKernel.SumQ4(w, x),
    };

    private static int SumQ8(byte* w, byte* x, IntegerDotPath path) => path switch
    {
        IntegerDotPath.AvxVnni => AvxVnniKernel.SumQ8(w, x),
        IntegerDotPath.Avx2 => Avx2Kernel.SumQ8(w, x),
        _ => ScalarKernel.SumQ8(w, x),
    };

    // ---------------------------------------------------------------- dot products (unchecked, pointers)

    /// <summary>Unchecked <see cref="DotQ4_0Q8_0(ReadOnlySpan{byte}, ReadOnlySpan{byte}, IntegerDotPath)"/> over <paramref name="blocks"/> blocks; path must be supported and not Auto.</summary>
    internal static float DotQ4_0Q8_0(byte* w, byte* x, int blocks, IntegerDotPath path) => path switch
    {
        IntegerDotPath.AvxVnni => RowQ4<AvxVnniKernel>(w, x, blocks),
        IntegerDotPath.Avx2 => RowQ4<Avx2Kernel>(w, x, blocks),
        _ => RowQ4<ScalarKernel>(w, x, blocks),
    };

    /// <summary>Unchecked <see cref="DotQ8_0Q8_0(ReadOnlySpan{byte}, ReadOnlySpan{byte}, IntegerDotPath)"/>; path must be supported and not Auto.</summary>
    internal static float DotQ8_0Q8_0(byte* w, byte* x, int blocks, IntegerDotPath path) => path switch
    {
        IntegerDotPath.AvxVnni => RowQ8<AvxVnniKernel>(w, x, blocks),
        IntegerDotPath.Avx2 => RowQ8<Avx2Kernel>(w, x, blocks),
        _ => RowQ8<ScalarKernel>(w, x, blocks),
    };

    /// <summary>Phase 2 for Q4_0: the reference's float loop, ((float)sumi * d_w) * d_x, blocks in order.</summary>
    private static float RowQ4<TKernel>(byte* w, byte* x, int blocks) where TKernel : struct, IBlockSums
    {
        float sumf = 0;
        for (int b = 0; b < blocks; b++, w += Q4Bytes, x += Q8Bytes)
            sumf += TKernel.SumQ4(w, x) * QuantTypes.HalfToSingle(*(ushort*)w) * QuantTypes.HalfToSingle(*(ushort*)x);
        return sumf;
    }

    /// <summary>Phase 2 for Q8_0: the reference's float loop, (float)sumi * (d_w * d_x), blocks in order.</summary>
    private static float RowQ8<TKernel>(byte* w, byte* x, int blocks) where TKernel : struct, IBlockSums
    {
        float sumf = 0;
        for (int b = 0; b < blocks; b++, w += Q8Bytes, x += Q8Bytes)
            sumf += TKernel.SumQ8(w, x) * (QuantTypes.HalfToSingle(*(ushort*)w) * QuantTypes.HalfToSingle(*(ushort*)x));
        return sumf;
    }

    /// <summary>Phase 1 of one path: the exact int32 sum of one weight block (Q4_0 or Q8_0) with one Q8_0 block.</summary>
    private interface IBlockSums
    {
        static abstract int SumQ4(byte* w, byte* x);
        static abstract int SumQ8(byte* w, byte* x);
    }

    private readonly struct ScalarKernel : IBlockSums
    {
        public static int SumQ4(byte* w, byte* x) => IntegerDotRef.BlockSumQ4_0Q8_0(*(BlockQ4_0*)w, *(BlockQ8_0*)x);
        public static int SumQ8(byte* w, byte* x) => IntegerDotRef.BlockSumQ8_0Q8_0(*(BlockQ8_0*)w, *(BlockQ8_0*)x);
    }

    /// <summary>The 32 nibbles of a Q4_0 block as unsigned bytes 0..15 in weight order (low nibbles, then high).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Nibbles(byte* w)
    {
        var low4 = Vector128.Create((byte)0x0F);
        var q = Sse2.LoadVector128(w + 2);
        return Vector256.Create(Sse2.And(q, low4), Sse2.And(Sse2.ShiftRightLogical(q.AsUInt16(), 4).AsByte(), low4));
    }

    private readonly struct Avx2Kernel : IBlockSums
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int SumQ4(byte* w, byte* x)
        {
            var xq = Avx.LoadVector256((sbyte*)(x + 2));
            var p = Avx2.MultiplyAddAdjacent(Nibbles(w), xq);                         // u0 x0 + u1 x1, |.| <= 3840
            var bias = Avx2.MultiplyAddAdjacent(Vector256.Create((byte)8), xq);       // 8 (x0 + x1),   |.| <= 2048
            return Vector256.Sum(Avx2.MultiplyAddAdjacent(Avx2.Subtract(p, bias), Vector256.Create((short)1)));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int SumQ8(byte* w, byte* x)
        {
            var lo = Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16((sbyte*)(w + 2)), Avx2.ConvertToVector256Int16((sbyte*)(x + 2)));
            var hi = Avx2.MultiplyAddAdjacent(Avx2.ConvertToVector256Int16((sbyte*)(w + 18)), Avx2.ConvertToVector256Int16((sbyte*)(x + 18)));
            return Vector256.Sum(Avx2.Add(lo, hi));
        }
    }

    private readonly struct AvxVnniKernel : IBlockSums
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int SumQ4(byte* w, byte* x)
        {
            var xq = Avx.LoadVector256((sbyte*)(x + 2));
            var p = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Nibbles(w), xq);
            var bias = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Vector256.Create((byte)8), xq);
            return Vector256.Sum(Avx2.Subtract(p, bias));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static int SumQ8(byte* w, byte* x)
        {
            var xq = Avx.LoadVector256((sbyte*)(x + 2));
            var biased = Avx2.Xor(Avx.LoadVector256(w + 2), Vector256.Create((byte)0x80));      // w + 128 as 0..255
            var p = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, biased, xq);
            var bias = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Vector256.Create((byte)0x80), xq);
            return Vector256.Sum(Avx2.Subtract(p, bias));
        }
    }
}
