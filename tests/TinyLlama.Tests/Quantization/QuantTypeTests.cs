// The block formats (src/TinyLlama.Core/Quantization/QuantType.cs) against llama.cpp's layout: block
// struct sizes, hand-computed blocks for Q4_0 (a positive and a negative scale, the clamp at nibble 15)
// and Q8_0 (halves rounding away from zero), the round-trip error bound on random rows, the tensor-level
// quantize/dequantize, and the one-line errors for rows that are not whole blocks or hold NaN.
using System.Runtime.CompilerServices;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Quantization;

public class QuantTypeTests
{
    [Fact]
    public void BlockStructsHaveGgmlsSizes()
    {
        Assert.Equal(18, Unsafe.SizeOf<BlockQ4_0>());
        Assert.Equal(34, Unsafe.SizeOf<BlockQ8_0>());
        Assert.Equal(Unsafe.SizeOf<BlockQ4_0>(), QuantType.Q4_0.Traits().BlockBytes);
        Assert.Equal(Unsafe.SizeOf<BlockQ8_0>(), QuantType.Q8_0.Traits().BlockBytes);
        Assert.Equal(2, (int)QuantType.Q4_0);   // ggml_type ids, as GGUF stores them
        Assert.Equal(8, (int)QuantType.Q8_0);
        Assert.Equal(QuantType.Q4_0, QuantTypes.Parse("Q4_0"));
        Assert.Contains("expected q4_0, q8_0, q4_K or q6_K", Assert.Throws<ArgumentException>(() => QuantTypes.Parse("q5_1")).Message);
    }

    [Fact]
    public void Q4_0BlockWithUnitScaleIsExactByHand()
    {
        // x = -8..7 then 7..-8: the largest magnitude is -8, so d = -8 / -8 = 1 (binary16 0x3C00) and every
        // value is exact: nibble = x + 8, weight j in the low nibble of byte j, weight 16 + j in its high nibble.
        var x = new float[32];
        for (int j = 0; j < 16; j++) { x[j] = j - 8; x[16 + j] = 7 - j; }
        var block = new byte[18];
        QuantTypes.QuantizeRowQ4_0(x, block);
        var expected = new byte[18];
        expected[0] = 0x00; expected[1] = 0x3C;
        for (int j = 0; j < 16; j++) expected[2 + j] = (byte)(j | ((15 - j) << 4));
        Assert.Equal(expected, block);
        var back = new float[32];
        QuantTypes.DequantizeRowQ4_0(block, back);
        Assert.Equal(x, back);
    }

    [Fact]
    public void Q4_0BlockWithNegativeScaleClampsTheOppositeExtreme()
    {
        // max = +16 (index 5) gives d = -2 (0xC000), 1/d = -0.5:
        //   16 -> trunc(-8 + 8.5) = 0 -> (0 - 8)(-2) = 16          (exact)
        //  -16 -> trunc(8 + 8.5) = 16, clamped to 15 -> -14         (index 20: the high nibble of byte 4)
        //    3 -> trunc(-1.5 + 8.5) = 7 -> 2                         (index 7)
        //    0 -> trunc(8.5) = 8 -> 0
        var x = new float[32];
        x[5] = 16; x[20] = -16; x[7] = 3;
        var block = new byte[18];
        QuantTypes.QuantizeRowQ4_0(x, block);
        var expected = Enumerable.Repeat((byte)0x88, 18).ToArray();
        expected[0] = 0x00; expected[1] = 0xC0;
        expected[2 + 4] = 0xF8;   // weight 4 (0 -> 8) low, weight 20 (-16 -> 15) high
        expected[2 + 5] = 0x80;   // weight 5 (16 -> 0) low, weight 21 (0 -> 8) high
        expected[2 + 7] = 0x87;   // weight 7 (3 -> 7) low
        Assert.Equal(expected, block);
        var back = new float[32];
        QuantTypes.DequantizeRowQ4_0(block, back);
        Assert.Equal(16f, back[5]);
        Assert.Equal(-14f, back[20]);
        Assert.Equal(2f, back[7]);
        Assert.Equal(0f, back[0]);
    }

    [Fact]
    public void AllZeroBlockHasNegativeZeroScale()
    {
        // max = 0, so d = 0 / -8 = -0 in IEEE arithmetic (binary16 0x8000), as ggml's C computes it; every
        // nibble is trunc(0 + 8.5) = 8.
        var block = new byte[18];
        QuantTypes.QuantizeRowQ4_0(new float[32], block);
        Assert.Equal(new byte[] { 0x00, 0x80 }, block[..2]);
        Assert.All(block[2..], b => Assert.Equal(0x88, b));
    }

    [Fact]
    public void Q8_0BlockRoundsHalvesAwayFromZero()
    {
        // amax = 63.5 gives d = 0.5 (binary16 0x3800), 1/d = 2: x = -63.5 -> -127, 0.25 -> round(0.5) = 1,
        // -0.25 -> -1, 1.5 -> 3, and j - 16 halves -> 2 (j - 16) / 2 ... exact.
        var x = new float[32];
        for (int j = 3; j < 32; j++) x[j] = 0.5f * (j - 16);
        x[0] = -63.5f; x[1] = 0.25f; x[2] = -0.25f;
        var block = new byte[34];
        QuantTypes.QuantizeRowQ8_0(x, block);
        Assert.Equal(0x00, block[0]);
        Assert.Equal(0x38, block[1]);
        Assert.Equal(-127, (sbyte)block[2]);
        Assert.Equal(1, (sbyte)block[3]);
        Assert.Equal(-1, (sbyte)block[4]);
        for (int j = 3; j < 32; j++) Assert.Equal(j - 16, (sbyte)block[2 + j]);
        var back = new float[32];
        QuantTypes.DequantizeRowQ8_0(block, back);
        Assert.Equal(-63.5f, back[0]);
        Assert.Equal(0.5f, back[1]);
        Assert.Equal(7.5f, back[31]);
    }

    [Theory]
    [InlineData(QuantType.Q4_0, 7)]
    [InlineData(QuantType.Q8_0, 127)]
    public void RoundTripErrorIsAtMostHalfAStep(QuantType type, int levels)
    {
        // Per block, step = amax / levels (the stored d). Every value is within step / 2 of its reconstruction,
        // plus binary16's rounding of d (relative 2^-11 of each value): the Q4_0 clamp at nibble 15 is the one
        // exception, a full step for values near -max.
        var traits = type.Traits();
        var rng = new Random(3);
        const int k = 32 * 9;
        var x = new float[k];
        for (int i = 0; i < k; i++) x[i] = (float)((rng.NextDouble() * 2 - 1) * Math.Pow(10, rng.Next(-3, 3)));
        var bytes = new byte[traits.RowBytes(k)];
        traits.Quantize(x, bytes);
        var back = new float[k];
        traits.Dequantize(bytes, back);
        for (int b = 0; b < k / 32; b++)
        {
            double amax = 0;
            for (int j = 0; j < 32; j++) amax = Math.Max(amax, Math.Abs(x[b * 32 + j]));
            double step = type == QuantType.Q4_0 ? amax / 8 : amax / levels;
            for (int j = 0; j < 32; j++)
            {
                int i = b * 32 + j;
                bool clamped = type == QuantType.Q4_0 && Math.Abs(x[i]) > 7.5 * step;
                double bound = (clamped ? 1.0 : 0.5) * step * (1 + 1e-6) + Math.Abs(x[i]) * Math.Pow(2, -10);
                Assert.True(Math.Abs(back[i] - x[i]) <= bound, $"{traits.Name} value {i}: {x[i]} came back as {back[i]} (bound {bound:g3})");
            }
        }
    }

    [Fact]
    public void TensorQuantizeAndDequantizeKeepRowsApart()
    {
        var w = Tensor.RandN([5, 64], new Generator(4));
        var q = Quantize.Q4_0(w);
        Assert.Equal(DType.Q4, q.DType);
        Assert.Equal([5, 2 * 18], q.Shape);
        var rows = q.ToArray<byte>();
        var values = w.ToArray<float>();
        for (int n = 0; n < 5; n++)
        {
            var expected = new byte[36];
            QuantTypes.QuantizeRowQ4_0(values.AsSpan(n * 64, 64), expected);
            Assert.Equal(expected, rows[(n * 36)..((n + 1) * 36)]);
        }
        var back = Quantize.DequantizeQ4_0(q).ToArray<float>();
        var manual = new float[5 * 64];
        for (int n = 0; n < 5; n++) QuantTypes.DequantizeRowQ4_0(rows.AsSpan(n * 36, 36), manual.AsSpan(n * 64, 64));
        Assert.Equal(manual, back);
    }

    [Fact]
    public void BadRowsGiveOneLineErrors()
    {
        var e = Assert.Throws<ArgumentException>(() => Quantize.Q4_0(Tensor.Zeros([2, 33])));
        Assert.Contains("33 weights is not a positive multiple of the block size 32", e.Message);
        var data = new float[64];
        data[32 + 3] = float.NaN;
        e = Assert.Throws<ArgumentException>(() => Quantize.Q4_0(Tensor.FromArray(data, [2, 32])));
        Assert.Contains("row 1", e.Message);
        Assert.Contains("index 3", e.Message);
        e = Assert.Throws<ArgumentException>(() => QuantTypes.QuantizeRowQ4_0(new float[32], new byte[17]));
        Assert.Contains("32 values and 17 bytes", e.Message);
        e = Assert.Throws<ArgumentException>(() => Quantize.DequantizeQ4_0(Tensor.Zeros([2, 19], DType.Q4)));
        Assert.Contains("19 bytes is not a whole number of 18-byte q4_0 blocks", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void FastHalfConversionEqualsTheFrameworksForAllBitPatterns()
    {
        for (int bits = 0; bits <= ushort.MaxValue; bits++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)bits);
            float got = QuantTypes.HalfToSingle((ushort)bits);
            Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(got) || (float.IsNaN(expected) && float.IsNaN(got)),
                $"0x{bits:X4}: {got}, expected {expected}");
        }
    }

    [Fact]
    public void FastSingleToHalfEqualsTheFrameworksConversion()
    {
        // Every float whose low 13 bits (those the rounding looks at) take a few telling values: exactly half
        // (ties, both parities of bit 13), just under and over half, zero, all ones; with every sign, exponent and
        // high mantissa pattern above them (2^19 x 6 values), so every binary16 result, the carries into the
        // exponent and into infinity, subnormals, zeros, infinities and NaN are all reached.
        uint[] lows = [0x0000, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x0001];
        for (uint high = 0; high < 1u << 19; high++)
            foreach (uint low in lows)
            {
                uint bits = high << 13 | low;
                float x = BitConverter.UInt32BitsToSingle(bits);
                ushort expected = BitConverter.HalfToUInt16Bits((Half)x), got = QuantTypes.SingleToHalfBits(x);
                Assert.True(expected == got || (float.IsNaN(x) && Half.IsNaN(BitConverter.UInt16BitsToHalf(got))),
                    $"0x{bits:X8} ({x}): 0x{got:X4}, expected 0x{expected:X4}");
            }
    }
}
