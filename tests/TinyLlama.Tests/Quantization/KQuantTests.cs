// The K-quant formats (src/TinyLlama.Core/Quantization/QuantType.cs: Q4_K, Q6_K) against llama.cpp's
// layout, from super-blocks built by hand: Q4_K with known six-bit scales and mins, including the packing
// of scales and mins 4..7 (low nibbles in bytes 8..11, high two bits in the top of bytes 0..7), and Q6_K
// with negative int8 scales (down to -128) and all four quarters of both halves. Expected values are
// computed here from the format's description (ggml's dequantize_row_q4_K / dequantize_row_q6_K loop
// order), plus a few worked by hand as literals. Also: struct sizes and field offsets, the traits, the
// DType <-> QuantType mapping, parsing, writing K-quants refused with one clear line, Q8_0 tensors
// through ToBlocks, and FromBytes's checks.
using System.Runtime.CompilerServices;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Quantization;

public class KQuantTests
{
    // Q4_K sub-block scales and mins: 6-bit values, several >= 16 so that scales/mins 4..7 need their high bits.
    private static readonly int[] Sc = [1, 2, 3, 4, 37, 50, 63, 17];
    private static readonly int[] Mn = [0, 5, 10, 63, 33, 48, 1, 62];

    /// <summary>One Q4_K super-block with scale bits d, dmin, the six-bit Sc/Mn above and qs[i] = 7 i + 3 + salt.</summary>
    private static byte[] Q4KBlock(ushort d, ushort dmin, int salt)
    {
        var b = new byte[144];
        b[0] = (byte)d; b[1] = (byte)(d >> 8);
        b[2] = (byte)dmin; b[3] = (byte)(dmin >> 8);
        for (int i = 0; i < 4; i++)
        {
            b[4 + i] = (byte)(Sc[i] | (Sc[i + 4] >> 4) << 6);            // scale i, high bits of scale i + 4
            b[4 + i + 4] = (byte)(Mn[i] | (Mn[i + 4] >> 4) << 6);        // min i, high bits of min i + 4
            b[4 + i + 8] = (byte)((Sc[i + 4] & 15) | (Mn[i + 4] & 15) << 4);   // low nibbles of scale and min i + 4
        }
        for (int i = 0; i < 128; i++) b[16 + i] = (byte)(7 * i + 3 + salt);
        return b;
    }

    [Fact]
    public void Q4_KSuperBlocksDequantizeAsBuiltByHand()
    {
        // Two super-blocks: d = 0.5, dmin = 0.25; then d = -1, dmin = 2 (binary16 0x3800, 0x3400, 0xBC00, 0x4000).
        var row = Q4KBlock(0x3800, 0x3400, 0).Concat(Q4KBlock(0xBC00, 0x4000, 1)).ToArray();
        var y = new float[512];
        QuantTypes.DequantizeRowQ4_K(row, y);
        double[] d = [0.5, -1], dmin = [0.25, 2];
        for (int blk = 0; blk < 2; blk++)
        {
            var qs = row.AsSpan(blk * 144 + 16, 128);
            // ggml's order: for each 64 weights, 32 low nibbles of qs[32 p ..] (sub-block 2p), then 32 high nibbles (2p + 1).
            for (int p = 0; p < 4; p++)
                for (int l = 0; l < 32; l++)
                {
                    double lo = d[blk] * Sc[2 * p] * (qs[32 * p + l] & 15) - dmin[blk] * Mn[2 * p];
                    double hi = d[blk] * Sc[2 * p + 1] * (qs[32 * p + l] >> 4) - dmin[blk] * Mn[2 * p + 1];
                    Assert.Equal(lo, y[blk * 256 + 64 * p + l]);
                    Assert.Equal(hi, y[blk * 256 + 64 * p + 32 + l]);
                }
        }
        // By hand (block 0): weight 160 is sub-block 5, high nibble of qs[64] = 0xC3 -> 12: 0.5 * 50 * 12 - 0.25 * 48.
        Assert.Equal(288f, y[160]);
        // weight 197: sub-block 6, low nibble of qs[101] = 0xC6 -> 6: 0.5 * 63 * 6 - 0.25 * 1.
        Assert.Equal(188.75f, y[197]);
        // weight 127: sub-block 3, high nibble of qs[63] = 0xBC -> 11: 0.5 * 4 * 11 - 0.25 * 63.
        Assert.Equal(6.25f, y[127]);
        // The unpacking of all 8 scale/min pairs.
        for (int i = 0; i < 8; i++) Assert.Equal((Sc[i], Mn[i]), QuantTypes.ScaleMinQ4_K(i, row.AsSpan(4, 12)));
        // The struct view reads the same bytes.
        var block = QuantTypes.Blocks<BlockQ4_K>(row)[1];
        Assert.Equal(-1f, (float)block.D);
        Assert.Equal(2f, (float)block.DMin);
        Assert.Equal(row[144 + 16 + 5], block.Qs[5]);
    }

    [Fact]
    public void Q6_KSuperBlockDequantizesAsBuiltByHand()
    {
        // ql[i] = 13 i + 5, qh[i] = 29 i + 11, scales with negatives down to -128, d = 0.25 (0x3400).
        sbyte[] sc = [1, -1, 2, -2, 127, -128, 5, -7, 10, -10, 3, -3, 64, -64, 0, 33];
        var b = new byte[210];
        for (int i = 0; i < 128; i++) b[i] = (byte)(13 * i + 5);
        for (int i = 0; i < 64; i++) b[128 + i] = (byte)(29 * i + 11);
        for (int i = 0; i < 16; i++) b[192 + i] = (byte)sc[i];
        b[208] = 0x00; b[209] = 0x34;
        var y = new float[256];
        QuantTypes.DequantizeRowQ6_K(b, y);
        // ggml's order: per half of 128, for l < 32: four weights l, l + 32, l + 64, l + 96 from ql[l], ql[l + 32]
        // (low nibbles, then high nibbles) and bit pairs 0, 2, 4, 6 of qh[l]; scales l / 16 + 0, 2, 4, 6.
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++)
            {
                int ql0 = b[64 * h + l], ql1 = b[64 * h + l + 32], qh = b[128 + 32 * h + l];
                int[] q = [(ql0 & 15 | (qh & 3) << 4) - 32, (ql1 & 15 | (qh >> 2 & 3) << 4) - 32,
                           (ql0 >> 4 | (qh >> 4 & 3) << 4) - 32, (ql1 >> 4 | (qh >> 6 & 3) << 4) - 32];
                for (int t = 0; t < 4; t++)
                    Assert.Equal(0.25 * sc[8 * h + l / 16 + 2 * t] * q[t], y[128 * h + 32 * t + l]);
            }
        // By hand: weight 200 (half 1, quarter 2, l = 8): high nibble of ql[72] = 0xAD -> 10, bits 4..5 of
        // qh[40] = 0x93 -> 1, q = 26 - 32 = -6, scale 12 = 64: 0.25 * 64 * -6.
        Assert.Equal(-96f, y[200]);
        // weight 48 (half 0, quarter 1, l = 16): low nibble of ql[48] = 0x75 -> 5, bits 2..3 of qh[16] = 0xDB -> 2,
        // q = 37 - 32 = 5, scale 3 = -2: 0.25 * -2 * 5.
        Assert.Equal(-2.5f, y[48]);
        // weight 80 (half 0, quarter 2, l = 16): high nibble of ql[16] = 0xD5 -> 13, bits 4..5 of qh[16] -> 1,
        // q = 29 - 32 = -3, scale 5 = -128: 0.25 * -128 * -3.
        Assert.Equal(96f, y[80]);
        var block = QuantTypes.Blocks<BlockQ6_K>(b)[0];
        Assert.Equal(-128, block.Scales[5]);
        Assert.Equal(0.25f, (float)block.D);
    }

    [Fact]
    public void BlockStructsAndTraitsFollowGgml()
    {
        Assert.Equal(144, Unsafe.SizeOf<BlockQ4_K>());
        Assert.Equal(210, Unsafe.SizeOf<BlockQ6_K>());
        var q6 = new BlockQ6_K();
        Assert.Equal(208, (int)Unsafe.ByteOffset(ref Unsafe.As<BlockQ6_K, byte>(ref q6), ref Unsafe.As<Half, byte>(ref q6.D)));
        Assert.Equal(192, (int)Unsafe.ByteOffset(ref Unsafe.As<BlockQ6_K, byte>(ref q6), ref Unsafe.As<SBytes16, byte>(ref q6.Scales)));
        var q4 = new BlockQ4_K();
        Assert.Equal(16, (int)Unsafe.ByteOffset(ref Unsafe.As<BlockQ4_K, byte>(ref q4), ref Unsafe.As<Bytes128, byte>(ref q4.Qs)));
        foreach (var (type, id, size, bytes, dtype) in new[]
        {
            (QuantType.Q4_0, 2, 32, 18, DType.Q4), (QuantType.Q8_0, 8, 32, 34, DType.Q8_0),
            (QuantType.Q4_K, 12, 256, 144, DType.Q4_K), (QuantType.Q6_K, 14, 256, 210, DType.Q6_K),
        })
        {
            Assert.Equal(id, (int)type);
            Assert.Equal((size, bytes), (type.Traits().BlockSize, type.Traits().BlockBytes));
            Assert.Equal(dtype, type.ToDType());
            Assert.Equal(type, QuantTypes.FromDType(dtype));
            Assert.Equal(type, QuantTypes.Parse(type.Traits().Name.ToUpperInvariant()));
            Assert.Equal(type, QuantTypes.Parse(type.Traits().Name.ToLowerInvariant()));
            Assert.Equal(type is QuantType.Q4_0 or QuantType.Q8_0, type.Traits().CanQuantize);
        }
        Assert.Contains("float32 is not a block-quantized dtype", Assert.Throws<ArgumentException>(() => QuantTypes.FromDType(DType.F32)).Message);
    }

    [Fact]
    public void WritingKQuantsIsRefusedWithOneLine()
    {
        var w = Tensor.RandN([2, 256], new Generator(3));
        var e = Assert.Throws<NotSupportedException>(() => Quantize.ToBlocks(w, QuantType.Q4_K));
        Assert.Equal("q4_K: writing is not supported; use q4_0 or q8_0", e.Message);
        e = Assert.Throws<NotSupportedException>(() => QuantType.Q6_K.Traits().Quantize(new float[256], new byte[210]));
        Assert.Equal("q6_K: writing is not supported; use q4_0 or q8_0", e.Message);
    }

    [Fact]
    public void Q8_0TensorsRoundTripThroughToBlocks()
    {
        var w = Tensor.RandN([3, 64], new Generator(5));
        var q = Quantize.ToBlocks(w, QuantType.Q8_0);
        Assert.Equal(DType.Q8_0, q.DType);
        Assert.Equal([3, 68], q.Shape);
        var bytes = q.ToArray<byte>();
        var values = w.ToArray<float>();
        var expected = new byte[68];
        var back = new float[64];
        for (int n = 0; n < 3; n++)
        {
            QuantTypes.QuantizeRowQ8_0(values.AsSpan(n * 64, 64), expected);
            Assert.Equal(expected, bytes[(n * 68)..((n + 1) * 68)]);
            QuantTypes.DequantizeRowQ8_0(expected, back);
            Assert.Equal(back, Quantize.Dequantize(q).ToArray<float>()[(n * 64)..((n + 1) * 64)]);
        }
        Assert.Contains("dequantize q4_0: expected q4_0 blocks, got q8_0", Assert.Throws<ArgumentException>(() => Quantize.DequantizeQ4_0(q)).Message);
    }

    [Fact]
    public void FromBytesChecksTheRows()
    {
        var t = Quantize.FromBytes(new byte[420], 2, DType.Q6_K);
        Assert.Equal([2, 210], t.Shape);
        Assert.Equal(DType.Q6_K, t.DType);
        Assert.Contains("q4_K blocks: 289 bytes do not split into 2 equal rows", Assert.Throws<ArgumentException>(() => Quantize.FromBytes(new byte[289], 2, DType.Q4_K)).Message);
        Assert.Contains("q4_K: a row of 145 bytes is not a positive multiple of the block size 144 bytes", Assert.Throws<ArgumentException>(() => Quantize.FromBytes(new byte[290], 2, DType.Q4_K)).Message);
        Assert.Contains("int32 is not a block-quantized dtype", Assert.Throws<ArgumentException>(() => Quantize.FromBytes(new byte[4], 1, DType.I32)).Message);
    }
}
