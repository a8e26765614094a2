// The integer dot products (src/TinyLlama.Core/Backends/Cpu/IntegerDot.cs) against their definition
// (Quantization/IntegerDotRef.cs, ggml's scalar vec_dot loops) and against f64:
//   - Q8_0 activation quantization: the fast path's bytes equal QuantTypes.QuantizeRowQ8_0's on random rows
//     with many exact halves, plus a hand-checked block (halves round away from zero) and its errors;
//   - every path this CPU runs (Scalar, AVX2, AVX-VNNI; the others are skipped with a message): per-block
//     int32 sums and the float dot exactly equal to the reference on random raw blocks (activations and Q8_0
//     weights include -128), on extreme blocks with hand-computed sums, for 1..17 blocks;
//   - the float dot against the f64 sum of dequantized products. Dequantized values are exact in f32
//     ((q - 8) d and q d: at most 8 + 11 significant bits), so the f64 sum is exact up to 2^-53 and the only
//     error is the f32 one: each block term (float)sumi * d_w * d_x is rounded twice and the running sum once
//     per block, so |dot - exact| <= (blocks + 2) u sum_b |term_b| with u = 2^-24 (to first order; Higham
//     section 3.1). We allow (blocks + 2) 2^-23 sum_i |w_i x_i|, far below one misplaced term.
using TinyLlama.Backends.Cpu;
using TinyLlama.Quantization;

namespace TinyLlama.Tests.Quantization;

public class IntegerDotTests
{
    /// <summary>The explicit paths; each test skips the ones this CPU cannot run.</summary>
    public static TheoryData<string> Paths => new() { "Scalar", "Avx2", "AvxVnni" };

    internal static IntegerDotPath SkipUnsupported(string name)
    {
        var path = Enum.Parse<IntegerDotPath>(name);
        Skip.IfNot(IntegerDot.IsSupported(path), $"{name} integer-dot path is not supported on this CPU");
        return path;
    }

    // ---------------------------------------------------------------- Q8_0 activations

    [Fact]
    public void Q8_0ActivationsRoundHalvesAwayFromZeroByHand()
    {
        // amax = 127 gives d = 1 (binary16 0x3C00) and id = 1, so q = round(x) with halves away from zero.
        var x = new float[32];
        x[0] = 127f; x[1] = 2.5f; x[2] = -2.5f; x[3] = 0.5f; x[4] = -0.5f; x[5] = 0.49999997f; x[6] = -126.5f; x[7] = 1.5f;
        var blocks = new byte[34];
        IntegerDot.QuantizeRowQ8_0(x, blocks);
        Assert.Equal(new byte[] { 0x00, 0x3C }, blocks[..2]);
        Assert.Equal(new sbyte[] { 127, 3, -3, 1, -1, 0, -127, 2 }, blocks[2..10].Select(b => (sbyte)b).ToArray());
        Assert.All(blocks[10..], b => Assert.Equal(0, b));
    }

    [Fact]
    public void Q8_0ActivationBytesEqualTheReference()
    {
        var rng = new Random(8);
        for (int blocks = 1; blocks <= 17; blocks++)
        {
            var x = new float[blocks * 32];
            for (int i = 0; i < x.Length; i++)
            {
                int kind = rng.Next(4);
                x[i] = kind switch
                {
                    0 => (float)(rng.NextDouble() * 2 - 1) * MathF.Pow(10, rng.Next(-6, 4)),
                    1 => rng.Next(-127, 128) + 0.5f,                 // halves (exact when the block's amax is 127)
                    2 => 0f,
                    _ => (float)rng.NextDouble() - 0.5f,
                };
            }
            if (blocks % 3 == 0) x[rng.Next(x.Length)] = 127f;       // some blocks with d = 1: exact ties
            if (blocks % 5 == 0) Array.Clear(x, 0, 32);               // an all-zero block: d = 0, id = 0
            if (blocks % 7 == 0) for (int j = 0; j < 32; j++) x[j] = 1e-30f * (j - 16);   // d underflows binary16
            var expected = new byte[blocks * 34];
            var actual = new byte[blocks * 34];
            QuantTypes.QuantizeRowQ8_0(x, expected);
            IntegerDot.QuantizeRowQ8_0(x, actual);
            Assert.Equal(expected, actual);
        }
    }

    [Fact]
    public void Q8_0ActivationErrorsAreOneLine()
    {
        var x = new float[64];
        x[40] = float.NaN;
        Assert.Contains("index 40", Assert.Throws<ArgumentException>(() => IntegerDot.QuantizeRowQ8_0(x, new byte[68])).Message);
        x[40] = float.PositiveInfinity;
        Assert.Contains("cannot be quantized", Assert.Throws<ArgumentException>(() => IntegerDot.QuantizeRowQ8_0(x, new byte[68])).Message);
        Assert.Contains("do not match", Assert.Throws<ArgumentException>(() => IntegerDot.QuantizeRowQ8_0(new float[33], new byte[34])).Message);
        Assert.Contains("x:", Assert.Throws<ArgumentException>(() => IntegerDot.DotQ4_0Q8_0(new byte[36], new byte[34])).Message);
        Assert.Contains("w:", Assert.Throws<ArgumentException>(() => IntegerDot.DotQ8_0Q8_0(new byte[35], new byte[34])).Message);
    }

    // ---------------------------------------------------------------- exact equality with the reference

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void RandomRawBlocksMatchTheReferenceExactly(string name)
    {
        var path = SkipUnsupported(name);
        var rng = new Random(17);
        for (int blocks = 1; blocks <= 17; blocks++)
            for (int trial = 0; trial < 4; trial++)
            {
                var x = RawBlocks(rng, blocks, 34);
                var w4 = RawBlocks(rng, blocks, 18);
                var w8 = RawBlocks(rng, blocks, 34);
                CheckAgainstReference(w4, w8, x, path);
            }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void ExtremeBlocksMatchHandSums(string name)
    {
        var path = SkipUnsupported(name);
        // (Q4_0 byte, Q8_0 weight, activation) -> per-block sums 32 (n - 8) a and 32 w a.
        (byte Nibbles, sbyte W8, sbyte X)[] cases =
        [
            (0x00, -128, -128),   // weight -8 times -128: 32768; Q8_0 (-128)^2: 524288 (the largest sums)
            (0x00, -128, 127),
            (0xFF, 127, -128),    // weight 7
            (0xFF, 127, 127),
            (0x88, 0, -128),      // weight 0
            (0xF0, -1, -128),     // low nibbles 0 (-8), high 15 (7): 16 (-8) a + 16 (7) a
        ];
        for (int blocks = 1; blocks <= 17; blocks += 4)
            foreach (var (nib, w, a) in cases)
            {
                var w4 = Filled(blocks, 18, nib);
                var w8 = Filled(blocks, 34, (byte)w);
                var x = Filled(blocks, 34, (byte)a);
                var sums = new int[blocks];
                IntegerDot.BlockSumsQ4_0Q8_0(w4, x, sums, path);
                int low = (nib & 0x0F) - 8, high = (nib >> 4) - 8;
                Assert.All(sums, s => Assert.Equal(16 * low * a + 16 * high * a, s));
                IntegerDot.BlockSumsQ8_0Q8_0(w8, x, sums, path);
                Assert.All(sums, s => Assert.Equal(32 * w * a, s));
                CheckAgainstReference(w4, w8, x, path);
            }
    }

    [SkippableTheory]
    [MemberData(nameof(Paths))]
    public void QuantizedRowsMatchTheReferenceAndF64(string name)
    {
        var path = SkipUnsupported(name);
        var rng = new Random(40);
        for (int blocks = 1; blocks <= 17; blocks++)
        {
            int k = blocks * 32;
            var xf = RandomFloats(rng, k);
            var x = new byte[blocks * 34];
            IntegerDot.QuantizeRowQ8_0(xf, x);
            var w4 = new byte[blocks * 18];
            var w8 = new byte[blocks * 34];
            QuantTypes.QuantizeRowQ4_0(RandomFloats(rng, k), w4);
            QuantTypes.QuantizeRowQ8_0(RandomFloats(rng, k), w8);
            CheckAgainstReference(w4, w8, x, path);

            var xv = new float[k];
            var wv = new float[k];
            QuantTypes.DequantizeRowQ8_0(x, xv);
            QuantTypes.DequantizeRowQ4_0(w4, wv);
            CheckAgainstF64(IntegerDot.DotQ4_0Q8_0(w4, x, path), wv, xv, blocks);
            QuantTypes.DequantizeRowQ8_0(w8, wv);
            CheckAgainstF64(IntegerDot.DotQ8_0Q8_0(w8, x, path), wv, xv, blocks);
        }
    }

    private static void CheckAgainstReference(byte[] w4, byte[] w8, byte[] x, IntegerDotPath path)
    {
        int blocks = x.Length / 34;
        var wb4 = QuantTypes.Blocks<BlockQ4_0>(new ReadOnlySpan<byte>(w4));
        var wb8 = QuantTypes.Blocks<BlockQ8_0>(new ReadOnlySpan<byte>(w8));
        var xb = QuantTypes.Blocks<BlockQ8_0>(new ReadOnlySpan<byte>(x));
        var sums = new int[blocks];
        IntegerDot.BlockSumsQ4_0Q8_0(w4, x, sums, path);
        for (int b = 0; b < blocks; b++) Assert.Equal(IntegerDotRef.BlockSumQ4_0Q8_0(wb4[b], xb[b]), sums[b]);
        IntegerDot.BlockSumsQ8_0Q8_0(w8, x, sums, path);
        for (int b = 0; b < blocks; b++) Assert.Equal(IntegerDotRef.BlockSumQ8_0Q8_0(wb8[b], xb[b]), sums[b]);
        Assert.Equal(BitConverter.SingleToInt32Bits(IntegerDotRef.DotQ4_0Q8_0(w4, x)), BitConverter.SingleToInt32Bits(IntegerDot.DotQ4_0Q8_0(w4, x, path)));
        Assert.Equal(BitConverter.SingleToInt32Bits(IntegerDotRef.DotQ8_0Q8_0(w8, x)), BitConverter.SingleToInt32Bits(IntegerDot.DotQ8_0Q8_0(w8, x, path)));
    }

    private static void CheckAgainstF64(float dot, float[] w, float[] x, int blocks)
    {
        double exact = 0, magnitude = 0;
        for (int i = 0; i < w.Length; i++) { exact += (double)w[i] * x[i]; magnitude += Math.Abs((double)w[i] * x[i]); }
        double tolerance = (blocks + 2) * Math.Pow(2, -23) * magnitude;
        Assert.True(Math.Abs(dot - exact) <= tolerance, $"dot {dot} vs f64 {exact}: error {Math.Abs(dot - exact)} > {tolerance} ({blocks} blocks)");
    }

    /// <summary>Random blocks of the given size: a finite binary16 scale in +-[2^-10, 1) and random bytes (all 256 values).</summary>
    private static byte[] RawBlocks(Random rng, int blocks, int blockBytes)
    {
        var bytes = new byte[blocks * blockBytes];
        rng.NextBytes(bytes);
        for (int b = 0; b < blocks; b++)
        {
            var d = (Half)((rng.Next(2) == 0 ? -1 : 1) * Math.Pow(2, -10 * rng.NextDouble()));
            BitConverter.TryWriteBytes(bytes.AsSpan(b * blockBytes, 2), BitConverter.HalfToUInt16Bits(d));
        }
        return bytes;
    }

    /// <summary>Blocks with scale 0.5 and every quant byte set to <paramref name="fill"/>.</summary>
    private static byte[] Filled(int blocks, int blockBytes, byte fill)
    {
        var bytes = new byte[blocks * blockBytes];
        for (int b = 0; b < blocks; b++)
        {
            BitConverter.TryWriteBytes(bytes.AsSpan(b * blockBytes, 2), BitConverter.HalfToUInt16Bits((Half)0.5f));
            bytes.AsSpan(b * blockBytes + 2, blockBytes - 2).Fill(fill);
        }
        return bytes;
    }

    internal static float[] RandomFloats(Random rng, int n)
    {
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float)(rng.NextDouble() * 2 - 1) * (i % 7 == 0 ? 3f : 1f);
        return v;
    }
}
