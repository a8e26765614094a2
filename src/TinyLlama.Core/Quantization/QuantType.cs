// Quantized block formats as llama.cpp lays them out (ggml-common.h: block_q4_0, block_q8_0), with the
// scalar reference quantizers that define them (ggml-quants.c: quantize_row_q4_0_ref, quantize_row_q8_0_ref,
// restated here from the format's description, not copied). One traits table describes every format, as
// ggml's type_traits does: name, ggml/GGUF type id, weights per block, bytes per block, and the two row
// converters. A quantized matrix [rows, K] is stored row by row, each row K / BlockSize blocks back to back
// (GGUF's tensor data layout), in a byte tensor of DType.Q4 with shape [rows, K / BlockSize * BlockBytes].
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
// d is rounded to binary16 (nearest even) when stored; the quantizers multiply by 1 / d of the unrounded d,
// as ggml's reference C is written. (A C build that contracts x * id + 8.5 into one FMA can differ from it
// in rare truncation ties; these quantizers follow the C as written, without contraction.)
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace TinyLlama.Quantization;

/// <summary>A quantized block format; the values are ggml's type ids (as GGUF stores them).</summary>
public enum QuantType
{
    /// <summary>32 weights: binary16 scale + 16 bytes of 4-bit weights, weight = (q - 8) d.</summary>
    Q4_0 = 2,
    /// <summary>32 weights: binary16 scale + 32 int8 weights, weight = q d.</summary>
    Q8_0 = 8,
}

/// <summary>Quantizes one row of floats (a multiple of the block size) into its blocks.</summary>
public delegate void RowQuantizer(ReadOnlySpan<float> x, Span<byte> blocks);

/// <summary>Expands one row of blocks back into floats.</summary>
public delegate void RowDequantizer(ReadOnlySpan<byte> blocks, Span<float> y);

/// <summary>The facts about one format (ggml's type_traits).</summary>
public sealed record QuantTraits(QuantType Type, string Name, int BlockSize, int BlockBytes, RowQuantizer Quantize, RowDequantizer Dequantize)
{
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

/// <summary>16 bytes inline.</summary>
[InlineArray(16)]
public struct Bytes16 { private byte element; }

/// <summary>32 signed bytes inline.</summary>
[InlineArray(32)]
public struct SBytes32 { private sbyte element; }

/// <summary>The traits table and the reference row converters.</summary>
public static class QuantTypes
{
    private static readonly QuantTraits Q4_0Traits = new(QuantType.Q4_0, "q4_0", BlockQ4_0.Size, 18, QuantizeRowQ4_0, DequantizeRowQ4_0);
    private static readonly QuantTraits Q8_0Traits = new(QuantType.Q8_0, "q8_0", BlockQ8_0.Size, 34, QuantizeRowQ8_0, DequantizeRowQ8_0);

    /// <summary>The traits of <paramref name="type"/>.</summary>
    public static QuantTraits Traits(this QuantType type) => type switch
    {
        QuantType.Q4_0 => Q4_0Traits,
        QuantType.Q8_0 => Q8_0Traits,
        _ => throw new ArgumentOutOfRangeException(nameof(type), $"unknown quantization type {(int)type}"),
    };

    /// <summary>Parses q4_0 / q8_0 (any case).</summary>
    public static QuantType Parse(string name) => name.ToLowerInvariant() switch
    {
        "q4_0" => QuantType.Q4_0,
        "q8_0" => QuantType.Q8_0,
        _ => throw new ArgumentException($"unknown quantization type '{name}': expected q4_0 or q8_0"),
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

    /// <summary>Throws unless <paramref name="values"/> values fill exactly <paramref name="bytes"/> bytes of blocks.</summary>
    private static void CheckRow(QuantTraits t, int values, int bytes)
    {
        if (values % t.BlockSize != 0 || bytes != values / t.BlockSize * t.BlockBytes)
            throw new ArgumentException($"{t.Name}: {values} values and {bytes} bytes do not match ({t.BlockSize} values per {t.BlockBytes}-byte block)");
    }
}
