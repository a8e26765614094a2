// Quantized block formats as llama.cpp lays them out (ggml-common.h: block_q4_0, block_q8_0, block_q4_K,
// block_q6_K), with the scalar reference converters that define them (ggml-quants.c: quantize_row_q4_0_ref,
// quantize_row_q8_0_ref, dequantize_row_q4_K, dequantize_row_q6_K, restated here from the format's
// description, not copied). One traits table describes every format, as ggml's type_traits does: name,
// ggml/GGUF type id, weights per block, bytes per block, and the two row converters (the K-quants are read
// only: their quantizer throws). A quantized matrix [rows, K] is stored row by row, each row K / BlockSize
// blocks back to back (GGUF's tensor data layout), in a byte tensor of the format's DType (Q4, Q8_0, Q4_K,
// Q6_K; QuantTypes.ToDType) with shape [rows, K / BlockSize * BlockBytes].
//
// Q4_0 (18 bytes per 32 weights, 4.5 bits per weight):
//     d      binary16 scale
//     qs[16] byte j holds weight j in its low nibble and weight j + 16 in its high nibble
//     weight = (nibble - 8) * d
//   Quantizing a block: max = the weight of largest magnitude, with its sign; d = max / -8; each weight
//   becomes min(15, trunc(x * (1 / d) + 8.5)). So the largest weight is nibble 0 (-8 d = max before d is
//   rounded to binary16), weights of the other sign reach nibble 15 (7 d, clamped), and the rounding error
//   is at most |d| / 2 elsewhere.
// Q8_0 (34 bytes per 32 weights):
//     d      binary16 scale
//     qs[32] int8 weights
//     weight = q * d, with d = max |x| / 127 and q = round(x * (1 / d)) (halves away from zero)
// Q4_K (144 bytes per super-block of 256 weights, 4.5 bits per weight): 8 sub-blocks of 32 weights
//     d, dmin     binary16 super-block scales of the sub-blocks' scales and mins
//     scales[12]  8 six-bit scales sc[i] and 8 six-bit mins m[i] (ggml's get_scale_min_k4):
//                   i < 4:  sc[i] = scales[i] & 63,                     m[i] = scales[i + 4] & 63
//                   i >= 4: sc[i] = (scales[i + 4] & 15) | (scales[i - 4] >> 6) << 4,
//                           m[i]  = (scales[i + 4] >> 4) | (scales[i] >> 6) << 4
//                 (bytes 0..7 carry the low six bits of sc/m 0..3 and, in their top two bits, the high bits
//                 of sc/m 4..7; bytes 8..11 carry the low nibbles of sc 4..7 and m 4..7)
//     qs[128]     4-bit weights, 32 bytes per pair of sub-blocks: byte 32 p + l holds weight l of sub-block
//                 2p in its low nibble and weight l of sub-block 2p + 1 in its high nibble
//     weight = (d sc[i]) q - dmin m[i]    (in f32, in that order)
// Q6_K (210 bytes per super-block of 256 weights, 6.5625 bits per weight): 16 sub-blocks of 16 weights
//     ql[128]     low 4 bits, qh[64] high 2 bits, scales[16] int8 sub-block scales, d binary16
//     Each half h (128 weights, ql + 64 h, qh + 32 h, scales + 8 h) holds four quarters t = 0..3 of 32
//     weights; weight l of quarter t has low bits from ql[l + 32 (t & 1)] (low nibble for t < 2, high
//     nibble otherwise), high bits (qh[l] >> 2 t) & 3, and scale scales[l / 16 + 2 t]:
//     weight = (d scales[...]) (q - 32)   (in f32, in that order)
// d is rounded to binary16 (nearest even) when stored; the quantizers multiply by 1 / d of the unrounded d,
// as ggml's reference C is written. (A C build that contracts x * id + 8.5 into one FMA can differ from it
// in rare truncation ties; these quantizers follow the C as written, without contraction.)
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TinyLlama.Tensors;

namespace TinyLlama.Quantization;

/// <summary>A quantized block format; the values are ggml's type ids (as GGUF stores them).</summary>
public enum QuantType
{
    /// <summary>32 weights: binary16 scale + 16 bytes of 4-bit weights, weight = (q - 8) d.</summary>
    Q4_0 = 2,
    /// <summary>32 weights: binary16 scale + 32 int8 weights, weight = q d.</summary>
    Q8_0 = 8,
    /// <summary>256 weights: 8 sub-blocks of 32 with six-bit scales and mins, 4-bit weights (read only).</summary>
    Q4_K = 12,
    /// <summary>256 weights: 16 sub-blocks of 16 with int8 scales, 6-bit weights (read only).</summary>
    Q6_K = 14,
}

/// <summary>Quantizes one row of floats (a multiple of the block size) into its blocks.</summary>
public delegate void RowQuantizer(ReadOnlySpan<float> x, Span<byte> blocks);

/// <summary>Expands one row of blocks back into floats.</summary>
public delegate void RowDequantizer(ReadOnlySpan<byte> blocks, Span<float> y);

/// <summary>
/// The facts about one format (ggml's type_traits). <paramref name="CanQuantize"/> is false for the formats
/// this project reads but does not write (the K-quants), whose <paramref name="Quantize"/> throws.
/// </summary>
public sealed record QuantTraits(QuantType Type, string Name, int BlockSize, int BlockBytes, RowQuantizer Quantize, RowDequantizer Dequantize, bool CanQuantize = true)
{
    /// <summary>
    /// Byte offsets, within a block, of its binary16 scales (d; d and dmin for Q4_K): the only block fields that
    /// can hold NaN or infinity (the rest are integers), which a weight scan such as --check-tensors reads.
    /// </summary>
    public int[] HalfScaleOffsets { get; init; } = [];

    /// <summary>Bytes of one row of <paramref name="k"/> weights; throws unless k is a whole number of blocks.</summary>
    public int RowBytes(int k)
    {
        if (k <= 0 || k % BlockSize != 0)
            throw new ArgumentException($"{Name}: a row of {k} weights is not a positive multiple of the block size {BlockSize}");
        return k / BlockSize * BlockBytes;
    }

    /// <summary>Weights in a row of <paramref name="rowBytes"/> bytes; throws unless it is a whole number of blocks.</summary>
    public int RowLength(int rowBytes)
    {
        if (rowBytes <= 0 || rowBytes % BlockBytes != 0)
            throw new ArgumentException($"{Name}: a row of {rowBytes} bytes is not a positive multiple of the block size {BlockBytes} bytes");
        return rowBytes / BlockBytes * BlockSize;
    }
}

/// <summary>One Q4_0 block, byte for byte as ggml's block_q4_0.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct BlockQ4_0
{
    /// <summary>Weights per block.</summary>
    public const int Size = 32;
    /// <summary>The scale.</summary>
    public Half D;
    /// <summary>Byte j: weight j (low nibble) and weight j + 16 (high nibble), each biased by 8.</summary>
    public Bytes16 Qs;
}

/// <summary>One Q8_0 block, byte for byte as ggml's block_q8_0.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct BlockQ8_0
{
    /// <summary>Weights per block.</summary>
    public const int Size = 32;
    /// <summary>The scale.</summary>
    public Half D;
    /// <summary>The weights as int8.</summary>
    public SBytes32 Qs;
}

/// <summary>One Q4_K super-block, byte for byte as ggml's block_q4_K.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct BlockQ4_K
{
    /// <summary>Weights per super-block.</summary>
    public const int Size = 256;
    /// <summary>The scale of the sub-blocks' scales.</summary>
    public Half D;
    /// <summary>The scale of the sub-blocks' mins.</summary>
    public Half DMin;
    /// <summary>8 six-bit scales and 8 six-bit mins, packed (see <see cref="QuantTypes.ScaleMinQ4_K"/>).</summary>
    public Bytes12 Scales;
    /// <summary>Byte 32 p + l: weight l of sub-block 2p (low nibble) and of sub-block 2p + 1 (high nibble).</summary>
    public Bytes128 Qs;
}

/// <summary>One Q6_K super-block, byte for byte as ggml's block_q6_K.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 1)]
public struct BlockQ6_K
{
    /// <summary>Weights per super-block.</summary>
    public const int Size = 256;
    /// <summary>Low 4 bits of the weights.</summary>
    public Bytes128 Ql;
    /// <summary>High 2 bits of the weights.</summary>
    public Bytes64 Qh;
    /// <summary>The 16 sub-blocks' scales.</summary>
    public SBytes16 Scales;
    /// <summary>The super-block scale.</summary>
    public Half D;
}

/// <summary>12 bytes inline.</summary>
[InlineArray(12)]
public struct Bytes12 { private byte element; }

/// <summary>16 bytes inline.</summary>
[InlineArray(16)]
public struct Bytes16 { private byte element; }

/// <summary>64 bytes inline.</summary>
[InlineArray(64)]
public struct Bytes64 { private byte element; }

/// <summary>128 bytes inline.</summary>
[InlineArray(128)]
public struct Bytes128 { private byte element; }

/// <summary>16 signed bytes inline.</summary>
[InlineArray(16)]
public struct SBytes16 { private sbyte element; }

/// <summary>32 signed bytes inline.</summary>
[InlineArray(32)]
public struct SBytes32 { private sbyte element; }

/// <summary>The traits table and the reference row converters.</summary>
public static class QuantTypes
{
    private static readonly QuantTraits Q4_0Traits = new(QuantType.Q4_0, "q4_0", BlockQ4_0.Size, 18, QuantizeRowQ4_0, DequantizeRowQ4_0) { HalfScaleOffsets = [0] };
    private static readonly QuantTraits Q8_0Traits = new(QuantType.Q8_0, "q8_0", BlockQ8_0.Size, 34, QuantizeRowQ8_0, DequantizeRowQ8_0) { HalfScaleOffsets = [0] };
    private static readonly QuantTraits Q4_KTraits = new(QuantType.Q4_K, "q4_K", BlockQ4_K.Size, 144, NotWritable("q4_K"), DequantizeRowQ4_K, CanQuantize: false) { HalfScaleOffsets = [0, 2] };
    private static readonly QuantTraits Q6_KTraits = new(QuantType.Q6_K, "q6_K", BlockQ6_K.Size, 210, NotWritable("q6_K"), DequantizeRowQ6_K, CanQuantize: false) { HalfScaleOffsets = [208] };

    /// <summary>The traits of <paramref name="type"/>.</summary>
    public static QuantTraits Traits(this QuantType type) => type switch
    {
        QuantType.Q4_0 => Q4_0Traits,
        QuantType.Q8_0 => Q8_0Traits,
        QuantType.Q4_K => Q4_KTraits,
        QuantType.Q6_K => Q6_KTraits,
        _ => throw new ArgumentOutOfRangeException(nameof(type), $"unknown quantization type {(int)type}"),
    };

    /// <summary>Parses q4_0, q8_0, q4_K, q6_K (any case; the K-quants can be read, not written).</summary>
    public static QuantType Parse(string name) => name.ToLowerInvariant() switch
    {
        "q4_0" => QuantType.Q4_0,
        "q8_0" => QuantType.Q8_0,
        "q4_k" => QuantType.Q4_K,
        "q6_k" => QuantType.Q6_K,
        _ => throw new ArgumentException($"unknown quantization type '{name}': expected q4_0, q8_0, q4_K or q6_K"),
    };

    /// <summary>The block tensor dtype that holds <paramref name="type"/>.</summary>
    public static DType ToDType(this QuantType type) => type switch
    {
        QuantType.Q4_0 => DType.Q4,
        QuantType.Q8_0 => DType.Q8_0,
        QuantType.Q4_K => DType.Q4_K,
        QuantType.Q6_K => DType.Q6_K,
        _ => throw new ArgumentOutOfRangeException(nameof(type), $"unknown quantization type {(int)type}"),
    };

    /// <summary>The format a block dtype holds; throws for any other dtype.</summary>
    public static QuantType FromDType(DType dtype) => dtype switch
    {
        DType.Q4 => QuantType.Q4_0,
        DType.Q8_0 => QuantType.Q8_0,
        DType.Q4_K => QuantType.Q4_K,
        DType.Q6_K => QuantType.Q6_K,
        _ => throw new ArgumentException($"{dtype.Name()} is not a block-quantized dtype (expected q4_0, q8_0, q4_K or q6_K)"),
    };

    /// <summary>The blocks of a row as structs (a view, no copy).</summary>
    public static Span<TBlock> Blocks<TBlock>(Span<byte> row) where TBlock : struct => MemoryMarshal.Cast<byte, TBlock>(row);

    /// <summary>Read-only view of a row's blocks.</summary>
    public static ReadOnlySpan<TBlock> Blocks<TBlock>(ReadOnlySpan<byte> row) where TBlock : struct => MemoryMarshal.Cast<byte, TBlock>(row);

    // ---------------------------------------------------------------- Q4_0

    /// <summary>Quantizes x (a multiple of 32 finite values) into Q4_0 blocks (18 bytes per 32 values).</summary>
    public static void QuantizeRowQ4_0(ReadOnlySpan<float> x, Span<byte> blocks)
    {
        CheckRow(Q4_0Traits, x.Length, blocks.Length);
        var output = Blocks<BlockQ4_0>(blocks);
        for (int b = 0; b < output.Length; b++)
        {
            var v = x.Slice(b * 32, 32);
            float amax = 0, max = 0;
            for (int j = 0; j < 32; j++)
            {
                if (!float.IsFinite(v[j])) throw new ArgumentException($"q4_0: value {v[j]} at index {b * 32 + j} cannot be quantized");
                if (amax < Math.Abs(v[j])) { amax = Math.Abs(v[j]); max = v[j]; }
            }
            float d = max / -8f;
            float id = d != 0 ? 1f / d : 0f;
            ref var block = ref output[b];
            block.D = (Half)d;
            for (int j = 0; j < 16; j++)
            {
                int lo = Math.Min(15, (int)(v[j] * id + 8.5f));        // truncation, as C's float-to-int
                int hi = Math.Min(15, (int)(v[j + 16] * id + 8.5f));
                block.Qs[j] = (byte)(lo | (hi << 4));
            }
        }
    }

    /// <summary>Expands Q4_0 blocks into y (32 values per 18 bytes).</summary>
    public static void DequantizeRowQ4_0(ReadOnlySpan<byte> blocks, Span<float> y)
    {
        CheckRow(Q4_0Traits, y.Length, blocks.Length);
        var input = Blocks<BlockQ4_0>(blocks);
        for (int b = 0; b < input.Length; b++)
        {
            float d = HalfToSingle(BitConverter.HalfToUInt16Bits(input[b].D));
            for (int j = 0; j < 16; j++)
            {
                byte q = input[b].Qs[j];
                y[b * 32 + j] = ((q & 0x0F) - 8) * d;
                y[b * 32 + j + 16] = ((q >> 4) - 8) * d;
            }
        }
    }

    // ---------------------------------------------------------------- Q8_0

    /// <summary>Quantizes x (a multiple of 32 finite values) into Q8_0 blocks (34 bytes per 32 values).</summary>
    public static void QuantizeRowQ8_0(ReadOnlySpan<float> x, Span<byte> blocks)
    {
        CheckRow(Q8_0Traits, x.Length, blocks.Length);
        var output = Blocks<BlockQ8_0>(blocks);
        for (int b = 0; b < output.Length; b++)
        {
            var v = x.Slice(b * 32, 32);
            float amax = 0;
            for (int j = 0; j < 32; j++)
            {
                if (!float.IsFinite(v[j])) throw new ArgumentException($"q8_0: value {v[j]} at index {b * 32 + j} cannot be quantized");
                amax = Math.Max(amax, Math.Abs(v[j]));
            }
            float d = amax / 127f;
            float id = d != 0 ? 1f / d : 0f;
            ref var block = ref output[b];
            block.D = (Half)d;
            for (int j = 0; j < 32; j++) block.Qs[j] = (sbyte)MathF.Round(v[j] * id, MidpointRounding.AwayFromZero);
        }
    }

    /// <summary>Expands Q8_0 blocks into y (32 values per 34 bytes).</summary>
    public static void DequantizeRowQ8_0(ReadOnlySpan<byte> blocks, Span<float> y)
    {
        CheckRow(Q8_0Traits, y.Length, blocks.Length);
        var input = Blocks<BlockQ8_0>(blocks);
        for (int b = 0; b < input.Length; b++)
        {
            float d = HalfToSingle(BitConverter.HalfToUInt16Bits(input[b].D));
            for (int j = 0; j < 32; j++) y[b * 32 + j] = input[b].Qs[j] * d;
        }
    }

    // ---------------------------------------------------------------- Q4_K

    /// <summary>Six-bit scale and min of sub-block <paramref name="i"/> (0..7) from a Q4_K block's 12 packed bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (int Scale, int Min) ScaleMinQ4_K(int i, ReadOnlySpan<byte> scales) => i < 4
        ? (scales[i] & 63, scales[i + 4] & 63)
        : ((scales[i + 4] & 0x0F) | ((scales[i - 4] >> 6) << 4), (scales[i + 4] >> 4) | ((scales[i] >> 6) << 4));

    /// <summary>Expands Q4_K super-blocks into y (256 values per 144 bytes).</summary>
    public static void DequantizeRowQ4_K(ReadOnlySpan<byte> blocks, Span<float> y)
    {
        CheckRow(Q4_KTraits, y.Length, blocks.Length);
        var input = Blocks<BlockQ4_K>(blocks);
        for (int b = 0; b < input.Length; b++)
        {
            ref readonly var block = ref input[b];
            float d = HalfToSingle(BitConverter.HalfToUInt16Bits(block.D));
            float dmin = HalfToSingle(BitConverter.HalfToUInt16Bits(block.DMin));
            ReadOnlySpan<byte> scales = block.Scales;
            ReadOnlySpan<byte> qs = block.Qs;
            var output = y.Slice(b * 256, 256);
            for (int p = 0; p < 4; p++)                      // sub-blocks 2p (low nibbles) and 2p + 1 (high)
            {
                var (sc0, m0) = ScaleMinQ4_K(2 * p, scales);
                var (sc1, m1) = ScaleMinQ4_K(2 * p + 1, scales);
                float d0 = d * sc0, min0 = dmin * m0, d1 = d * sc1, min1 = dmin * m1;
                for (int l = 0; l < 32; l++)
                {
                    byte q = qs[32 * p + l];
                    output[64 * p + l] = d0 * (q & 0x0F) - min0;
                    output[64 * p + 32 + l] = d1 * (q >> 4) - min1;
                }
            }
        }
    }

    // ---------------------------------------------------------------- Q6_K

    /// <summary>Expands Q6_K super-blocks into y (256 values per 210 bytes).</summary>
    public static void DequantizeRowQ6_K(ReadOnlySpan<byte> blocks, Span<float> y)
    {
        CheckRow(Q6_KTraits, y.Length, blocks.Length);
        var input = Blocks<BlockQ6_K>(blocks);
        for (int b = 0; b < input.Length; b++)
        {
            ref readonly var block = ref input[b];
            float d = HalfToSingle(BitConverter.HalfToUInt16Bits(block.D));
            ReadOnlySpan<byte> ql = block.Ql, qh = block.Qh;
            ReadOnlySpan<sbyte> scales = block.Scales;
            for (int h = 0; h < 2; h++)                      // two halves of 128 weights
                for (int t = 0; t < 4; t++)                  // four quarters of 32 in each
                    for (int l = 0; l < 32; l++)
                    {
                        int low = ql[64 * h + l + 32 * (t & 1)];
                        low = t < 2 ? low & 0x0F : low >> 4;
                        int q = (low | (((qh[32 * h + l] >> (2 * t)) & 3) << 4)) - 32;
                        y[b * 256 + 128 * h + 32 * t + l] = d * scales[8 * h + l / 16 + 2 * t] * q;
                    }
        }
    }

    /// <summary>The quantizer of a read-only format: throws a one-line NotSupportedException.</summary>
    private static RowQuantizer NotWritable(string name) =>
        (_, _) => throw new NotSupportedException($"{name}: writing is not supported; use q4_0 or q8_0");

    /// <summary>
    /// binary16 bits to float, exactly as (float)Half: normal numbers by moving the fields (rebias the exponent
    /// by 127 - 15 = 112), zeros, subnormals, infinities and NaN through Half. The hot loops use this because
    /// the framework's conversion costs about 120 ns per call on this project's AVX2 test machine (measured:
    /// a 4096 x 4096 Q4_0 mat-vec took 67 ms with it and 3.2 ms with this).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float HalfToSingle(ushort bits)
    {
        uint exponent = (uint)(bits >> 10) & 0x1F;
        if (exponent - 1 < 30)
            return BitConverter.UInt32BitsToSingle(((uint)(bits & 0x8000) << 16) | (((uint)(bits & 0x7FFF) + 0x1C000) << 13));
        return (float)BitConverter.UInt16BitsToHalf(bits);
    }

    /// <summary>
    /// float to binary16 bits, exactly as BitConverter.HalfToUInt16Bits((Half)x) (round to nearest, ties to even):
    /// positive values in the normal range by rounding at bit 13 and rebiasing the exponent (a carry out of the
    /// mantissa moves into the exponent, up to infinity at 65520, as it should), everything else through Half.
    /// The activation quantizers call this once per 32-value block, where the framework's conversion was a third
    /// of their time.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort SingleToHalfBits(float x)
    {
        uint f = BitConverter.SingleToUInt32Bits(x);
        // 0x38800000 = 2^-14, the smallest normal binary16; 0x47800000 = 65536.
        if (f - 0x38800000u < 0x47800000u - 0x38800000u)
            return (ushort)((f + 0xFFFu + ((f >> 13) & 1u) - 0x38000000u) >> 13);
        return BitConverter.HalfToUInt16Bits((Half)x);
    }

    /// <summary>Throws unless <paramref name="values"/> values fill exactly <paramref name="bytes"/> bytes of blocks.</summary>
    private static void CheckRow(QuantTraits t, int values, int bytes)
    {
        if (values % t.BlockSize != 0 || bytes != values / t.BlockSize * t.BlockBytes)
            throw new ArgumentException($"{t.Name}: {values} values and {bytes} bytes do not match ({t.BlockSize} values per {t.BlockBytes}-byte block)");
    }
}
