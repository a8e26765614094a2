// The decoding mat-vec rows in integer arithmetic (src/TinyLlama.Core/Backends/Cpu/IntegerRows.cs):
//   - QuantizedActivations: the Q8_0 form byte for byte llama.cpp's quantizer (QuantTypes.QuantizeRowQ8_0), the
//     per-lane bias it precomputes, and the Q8_K form against ggml's rules restated here (hand case + random);
//   - each row kernel (Q4_0, Q8_0, Q4_K, Q6_K) on every path this CPU runs (the others skip with a message)
//     against an f64 sum. For Q4_0 / Q8_0 the f64 sum is of IntegerDotRef's exact block sums times both scales;
//     for the K-quants, of the dequantized weights (QuantTypes' reference converters) times d_x q. The row
//     rounds each block's term and the running sums in f32, so the error is at most about (terms + 4) u
//     sum |term| with u = 2^-24 (Higham 3.1); we allow (terms + 4) 2^-23 sum |w_i x_i|, far below one wrong
//     block, nibble, scale or min (each of which moves the result by a whole term);
//   - extreme values with exact results (d = 1): Q8_0 weights of -128 against +-127, Q4_0 nibbles 0 (-8);
//   - a non-finite activation makes the row NaN instead of a finite wrong number.
using TinyLlama.Backends.Cpu;
using TinyLlama.Quantization;

namespace TinyLlama.Tests.Quantization;

public class IntegerRowsTests
{
    public static TheoryData<string, QuantType> PathsAndTypes()
    {
        var data = new TheoryData<string, QuantType>();
        foreach (var path in new[] { "Scalar", "Avx2", "AvxVnni" })
            foreach (var type in new[] { QuantType.Q4_0, QuantType.Q8_0, QuantType.Q4_K, QuantType.Q6_K })
                data.Add(path, type);
        return data;
    }

    [Fact]
    public void Q8_0FormEqualsTheReferenceQuantizer()
    {
        var rng = new Random(3);
        foreach (int k in new[] { 32, 64, 96, 768, 2048 + 32 })
        {
            var x = IntegerDotTests.RandomFloats(rng, k);
            var a = new QuantizedActivations(k);
            a.Quantize(x);
            var blocks = new byte[k / 32 * 34];
            QuantTypes.QuantizeRowQ8_0(x, blocks);
            for (int b = 0; b < k / 32; b++)
            {
                Assert.Equal(QuantTypes.HalfToSingle(BitConverter.ToUInt16(blocks, b * 34)), a.Scales[b]);
                for (int j = 0; j < 32; j++) Assert.Equal((sbyte)blocks[b * 34 + 2 + j], a.Values[b * 32 + j]);
            }
        }
    }

    [Fact]
    public void Q8_KFormFollowsGgmlsRulesByHand()
    {
        // max = -4 (largest magnitude, negative): iscale = -127 / -4 = 31.75, d = 1 / 31.75.
        // 1 -> 31.75 -> 32; -4 -> -127; 2 -> 63.5 -> 64 (half to even); 0.5 -> 15.875 -> 16; -1 -> -31.75 -> -32.
        var x = new float[256];
        x[0] = 1; x[1] = -4; x[2] = 2; x[3] = 0.5f; x[16] = -1;
        var a = new QuantizedActivations(256);
        a.Quantize(x, q8_0: false, q8K: true);
        Assert.Equal(1f / 31.75f, a.ScalesK[0]);
        Assert.Equal(new sbyte[] { 32, -127, 64, 16 }, a.ValuesK[..4].ToArray());
        Assert.Equal(-32, a.ValuesK[16]);
        Assert.Equal(32 - 127 + 64 + 16, a.BlockSumsK[0]);
        Assert.Equal(-32, a.BlockSumsK[1]);
        Assert.All(a.BlockSumsK[2..].ToArray(), s => Assert.Equal(0, s));

        // Random values: every q within one of x / d, capped at 127, and the sums consistent.
        var rng = new Random(4);
        var y = IntegerDotTests.RandomFloats(rng, 512);
        a = new QuantizedActivations(512);
        a.Quantize(y, q8_0: false, q8K: true);
        for (int i = 0; i < 512; i++)
        {
            double exact = y[i] / (double)a.ScalesK[i / 256];
            Assert.True(Math.Abs(a.ValuesK[i] - exact) <= 0.5 + 1e-4, $"value {i}: q {a.ValuesK[i]}, x / d {exact}");
        }
        for (int g = 0; g < 32; g++)
        {
            int s = 0;
            for (int j = 0; j < 16; j++) s += a.ValuesK[16 * g + j];
            Assert.Equal(s, a.BlockSumsK[g]);
        }
    }

    [SkippableTheory]
    [MemberData(nameof(PathsAndTypes))]
    public void RowsMatchAnF64SumOfTheSameTerms(string pathName, QuantType type)
    {
        var path = IntegerDotTests.SkipUnsupported(pathName);
        var rng = new Random(10 + (int)type);
        var traits = type.Traits();
        foreach (int units in new[] { 1, 2, 3, 5, 8 })
        {
            int k = units * (traits.BlockSize == 32 ? 32 * 7 : 256);   // Q4_0 / Q8_0: 7, 14, ... blocks (odd counts too)
            var row = RawBlocks(rng, type, k);
            var x = IntegerDotTests.RandomFloats(rng, k);
            var a = new QuantizedActivations(k);
            a.Quantize(x, q8_0: !IntegerRows.UsesQ8K(type), q8K: IntegerRows.UsesQ8K(type));
            var (exact, magnitude, terms) = Reference(type, row, a, x);
            float dot = IntegerRows.Dot(type, row, a, path);
            double bound = (terms + 4) * Math.Pow(2, -23) * magnitude;
            Assert.True(Math.Abs(dot - exact) <= bound, $"{type} K={k} {path}: {dot} vs {exact} (bound {bound})");
        }
    }

    [SkippableTheory]
    [InlineData("Scalar")]
    [InlineData("Avx2")]
    [InlineData("AvxVnni")]
    public void ExtremeValuesGiveExactSums(string pathName)
    {
        var path = IntegerDotTests.SkipUnsupported(pathName);
        // Activations with amax 127 in every block: d = 1, q = x.
        var x = new float[64];
        for (int i = 0; i < 64; i++) x[i] = i % 2 == 0 ? 127 : -127;
        var a = new QuantizedActivations(64);
        a.Quantize(x);
        Assert.Equal(1f, a.Scales[0]);

        // Q8_0 weights all -128 with d = 1: sum = -128 * (127 - 127) * 16 = 0 per block; then one weight -128
        // against +127, the rest 0: -16256 per block.
        var q8 = Blocks(2, 34, 1f, -128);
        Assert.Equal(0f, IntegerRows.Dot(QuantType.Q8_0, q8, a, path));
        q8 = Blocks(2, 34, 1f, 0);
        q8[2] = 0x80; q8[34 + 2] = 0x80;
        Assert.Equal(2 * -128f * 127, IntegerRows.Dot(QuantType.Q8_0, q8, a, path));

        // Q4_0 nibbles all 0 (weight -8): the first 16 weights of a block meet q[0..16), the last 16 q[16..32):
        // every block sums to -8 * (8 * 127 - 8 * 127) = 0; with only byte 0 = 0x00 and the rest 0x88 (weight 0),
        // weights 0 and 16 are -8: -8 * 127 + -8 * 127 = -2032 per block.
        var q4 = Blocks(2, 18, 1f, 0x00);
        Assert.Equal(0f, IntegerRows.Dot(QuantType.Q4_0, q4, a, path));
        q4 = Blocks(2, 18, 1f, 0x88);
        q4[2] = 0x00; q4[18 + 2] = 0x00;
        Assert.Equal(2 * -2032f, IntegerRows.Dot(QuantType.Q4_0, q4, a, path));
    }

    [Theory]
    [InlineData(QuantType.Q4_0)]
    [InlineData(QuantType.Q6_K)]
    public void ANonFiniteActivationMakesTheRowNaN(QuantType type)
    {
        var rng = new Random(5);
        var x = IntegerDotTests.RandomFloats(rng, 512);
        x[300] = float.PositiveInfinity;
        var a = new QuantizedActivations(512);
        a.Quantize(x, q8_0: true, q8K: true);
        Assert.True(float.IsNaN(IntegerRows.Dot(type, RawBlocks(rng, type, 512), a)));
    }

    [Fact]
    public void BadShapesAreOneLineErrors()
    {
        Assert.Contains("positive multiple of 32", Assert.Throws<ArgumentException>(() => new QuantizedActivations(48)).Message);
        var a = new QuantizedActivations(64);
        Assert.Contains("expected K = 64", Assert.Throws<ArgumentException>(() => a.Quantize(new float[32])).Message);
        Assert.Contains("multiple of 256", Assert.Throws<ArgumentException>(() => a.Quantize(new float[64], q8K: true)).Message);
        Assert.Contains("do not hold K = 64", Assert.Throws<ArgumentException>(() => IntegerRows.Dot(QuantType.Q4_0, new byte[18], a)).Message);
    }

    // ---------------------------------------------------------------- references

    // (exact f64 result, sum of |term|, number of f32-rounded terms) for one row.
    private static (double Exact, double Magnitude, int Terms) Reference(QuantType type, byte[] row, QuantizedActivations a, float[] x)
    {
        int k = x.Length;
        if (type is QuantType.Q4_0 or QuantType.Q8_0)
        {
            var xb = new byte[k / 32 * 34];
            QuantTypes.QuantizeRowQ8_0(x, xb);
            var wBlocks = type == QuantType.Q4_0 ? null : QuantTypes.Blocks<BlockQ8_0>(row).ToArray();
            var w4 = type == QuantType.Q4_0 ? QuantTypes.Blocks<BlockQ4_0>(row).ToArray() : null;
            var xs = QuantTypes.Blocks<BlockQ8_0>(xb).ToArray();
            double exact = 0, magnitude = 0;
            for (int b = 0; b < k / 32; b++)
            {
                int sumi = w4 is not null ? IntegerDotRef.BlockSumQ4_0Q8_0(w4[b], xs[b]) : IntegerDotRef.BlockSumQ8_0Q8_0(wBlocks![b], xs[b]);
                double dw = (double)(w4 is not null ? w4[b].D : wBlocks![b].D), term = sumi * dw * (double)xs[b].D;
                exact += term;
                // |sum_j w_j q_j| <= sum_j |w_j q_j|: bound the rounding by the absolute products.
                double abs = 0;
                for (int j = 0; j < 32; j++)
                {
                    int wq = w4 is not null ? ((j < 16 ? w4[b].Qs[j] & 0x0F : w4[b].Qs[j - 16] >> 4) - 8) : wBlocks![b].Qs[j];
                    abs += Math.Abs(wq * (double)xs[b].Qs[j]);
                }
                magnitude += abs * Math.Abs(dw * (double)xs[b].D);
            }
            return (exact, magnitude, k / 32);
        }
        var w = new float[k];
        if (type == QuantType.Q4_K) QuantTypes.DequantizeRowQ4_K(row, w);
        else QuantTypes.DequantizeRowQ6_K(row, w);
        double e = 0, m = 0;
        for (int i = 0; i < k; i++)
        {
            double xi = (double)a.ScalesK[i / 256] * a.ValuesK[i];
            e += w[i] * xi;
            m += Math.Abs(w[i] * xi);
        }
        // Q4_K's dequantized weights (d sc) q - dmin m are rounded in f32 where the row keeps the two terms apart:
        // allow that rounding too (one more u per weight, within the bound's slack at 4 + terms).
        return (e, m, 2 * (k / 256) + 8);
    }

    /// <summary>A row of K weights of random bytes with finite scales (binary16 in +-[2^-10, 1)) where the format has them.</summary>
    private static byte[] RawBlocks(Random rng, QuantType type, int k)
    {
        var traits = type.Traits();
        int blocks = k / traits.BlockSize, size = traits.BlockBytes;
        var bytes = new byte[blocks * size];
        rng.NextBytes(bytes);
        for (int b = 0; b < blocks; b++)
            foreach (int o in traits.HalfScaleOffsets)
            {
                var d = (Half)((rng.Next(2) == 0 ? -1 : 1) * Math.Pow(2, -10 * rng.NextDouble()));
                BitConverter.TryWriteBytes(bytes.AsSpan(b * size + o, 2), BitConverter.HalfToUInt16Bits(d));
            }
        return bytes;
    }

    private static byte[] Blocks(int blocks, int blockBytes, float d, int fill)
    {
        var bytes = new byte[blocks * blockBytes];
        for (int b = 0; b < blocks; b++)
        {
            BitConverter.TryWriteBytes(bytes.AsSpan(b * blockBytes, 2), BitConverter.HalfToUInt16Bits((Half)d));
            bytes.AsSpan(b * blockBytes + 2, blockBytes - 2).Fill((byte)fill);
        }
        return bytes;
    }
}
