// Q4_0 rows repacked in groups of eight (src/TinyLlama.Core/Backends/Cpu/RepackedQ4_0.cs):
//   - the layout by hand (scales, then chunk i = four bytes of each of the eight rows);
//   - the mat-vec and the four-token GEMM on every path this CPU runs, bit for bit against ReferenceMatVec (the
//     exact integer block sums, then one f32 FMA per block in the same order), at several row counts, K, token
//     counts (tails of the 4-token tile) and group ranges, with random and extreme nibbles (0 = -8 against -127 and
//     +127), negative, subnormal and zero scales;
//   - the reference itself within (blocks + 4) 2^-23 sum |w x| of an f64 sum of the dequantized weights times
//     the dequantized activations (Higham's bound, as IntegerRowsTests), so it defines the right product;
//   - Q8_0Rows equal QuantizedActivations row by row; a non-finite activation makes the rows NaN;
//   - RepackedQ4_0.For: cached per tensor, null for a row count that is not a multiple of 8 or an infinite scale;
//     over a copy-on-write file mapping it releases the plain rows' pages and every byte still reads back.
using TinyLlama.Backends.Cpu;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Quantization;

public unsafe class RepackedQ4_0Tests
{
    private const int Q4Bytes = 18;

    [SkippableFact]
    public void LayoutByHand()
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "repacked Q4_0 needs AVX2 and FMA");
        // 8 rows x 64 weights (2 blocks): byte j of row r's block b holds 16 r + 2 b + j (mod 256); scale bits 100 r + b.
        var rows = new byte[8 * 2 * Q4Bytes];
        for (int r = 0; r < 8; r++)
            for (int b = 0; b < 2; b++)
            {
                int o = (r * 2 + b) * Q4Bytes;
                BitConverter.TryWriteBytes(rows.AsSpan(o, 2), (ushort)(100 * r + b));
                for (int j = 0; j < 16; j++) rows[o + 2 + j] = (byte)(16 * r + 2 * b + j);
            }
        var packed = new RepackedQ4_0(rows, 8, 64).Bytes;
        Assert.Equal(8 * 2 * Q4Bytes, packed.Length);
        for (int b = 0; b < 2; b++)
        {
            var block = packed.Slice(144 * b, 144);
            for (int r = 0; r < 8; r++) Assert.Equal(100 * r + b, BitConverter.ToUInt16(block.Slice(2 * r, 2)));
            // chunk i: rows 0..7 in turn, four bytes each (row r's bytes 4i .. 4i + 3).
            for (int i = 0; i < 4; i++)
                for (int r = 0; r < 8; r++)
                    for (int j = 0; j < 4; j++)
                        Assert.Equal((byte)(16 * r + 2 * b + 4 * i + j), block[16 + 32 * i + 4 * r + j]);
        }
    }

    [SkippableTheory]
    [InlineData(8, 32)]
    [InlineData(16, 96)]
    [InlineData(64, 768)]
    [InlineData(24, 2048)]
    public void MatVecEqualsTheReferenceBitForBit(int rows, int k)
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "repacked Q4_0 needs AVX2 and FMA");
        var rng = new Random(rows * 31 + k);
        var w = RandomRows(rng, rows, k);
        var x = IntegerDotTests.RandomFloats(rng, k);
        var a = new QuantizedActivations(k);
        a.Quantize(x);
        var expected = new float[rows];
        RepackedQ4_0.ReferenceMatVec(w, rows, k, a.Values, a.Scales, expected);
        var packed = new RepackedQ4_0(w, rows, k);
        var y = new float[rows];
        fixed (float* py = y)
        {
            packed.MatVec(a, py, 0, packed.Groups, accumulate: false);
            AssertBits(expected, y);
            packed.MatVecAvx2(a, py);
            AssertBits(expected, y);
            // A group range with accumulate: groups outside it keep their values, groups inside add.
            var before = Enumerable.Range(0, rows).Select(i => (float)i).ToArray();
            before.CopyTo(y, 0);
            int g0 = packed.Groups / 2, g1 = packed.Groups;
            packed.MatVec(a, py, g0, g1, accumulate: true);
            for (int i = 0; i < rows; i++)
                Assert.Equal(i >= 8 * g0 ? before[i] + expected[i] : before[i], y[i]);
        }
    }

    [SkippableTheory]
    [InlineData(1, 16, 64)]
    [InlineData(4, 8, 256)]
    [InlineData(7, 16, 96)]
    [InlineData(9, 32, 768)]
    public void MatMulEqualsTheReferenceForEveryToken(int m, int rows, int k)
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "repacked Q4_0 needs AVX2 and FMA");
        var rng = new Random(m * 1000 + rows + k);
        var w = RandomRows(rng, rows, k);
        var x = IntegerDotTests.RandomFloats(rng, m * k);
        var packed = new RepackedQ4_0(w, rows, k);
        var q8 = new Q8_0Rows();
        var y = new float[m * (rows + 3)];              // row stride rows + 3: the kernel honours ldy
        fixed (float* px = x, py = y)
        {
            q8.Quantize(px, m, k);
            foreach (bool avx2Only in new[] { false, true })
            {
                Array.Fill(y, float.NaN);
                if (avx2Only) packed.MatMulAvx2(q8, py, rows + 3);
                else packed.MatMul(q8, py, rows + 3, 0, packed.Groups);
                for (int t = 0; t < m; t++)
                {
                    var expected = new float[rows];
                    RepackedQ4_0.ReferenceMatVec(w, rows, k, q8.Values(t), q8.Scales(t), expected);
                    AssertBits(expected, y.AsSpan(t * (rows + 3), rows).ToArray());
                    Assert.True(y.AsSpan(t * (rows + 3) + rows, 3).ToArray().All(float.IsNaN), "the kernel wrote past its rows");
                }
            }
        }
    }

    [SkippableFact]
    public void ExtremeValuesAreExact()
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "repacked Q4_0 needs AVX2 and FMA");
        // Every nibble 0 (weight -8 d, d = 1) against activations 127 (first half) and -127 (second): block sum
        // -8 (16 x 127 - 16 x 127) = 0; then nibble 15 (+7) everywhere: 7 x 0 = 0; mixed rows below.
        const int k = 64, rows = 8;
        var w = new byte[rows * 2 * Q4Bytes];
        for (int r = 0; r < rows; r++)
            for (int b = 0; b < 2; b++)
            {
                int o = (r * 2 + b) * Q4Bytes;
                BitConverter.TryWriteBytes(w.AsSpan(o, 2), (ushort)0x3C00);        // d = 1
                // row r: low nibbles 0 (-8), high nibbles r (r - 8)
                for (int j = 0; j < 16; j++) w[o + 2 + j] = (byte)(r << 4);
            }
        var x = new float[k];
        for (int j = 0; j < k; j++) x[j] = j % 32 < 16 ? 127 : -127;                  // d_x = 1, q = +-127
        var a = new QuantizedActivations(k);
        a.Quantize(x);
        Assert.Equal(1f, a.Scales[0]);
        var y = new float[rows];
        fixed (float* py = y) new RepackedQ4_0(w, rows, k).MatVec(a, py, 0, 1, accumulate: false);
        // per block: 16 x (-8) x 127 + 16 x (r - 8) x (-127) = -16 x 127 x r; two blocks.
        for (int r = 0; r < rows; r++) Assert.Equal(-2f * 16 * 127 * r, y[r]);
    }

    [Fact]
    public void ReferenceIsTheDequantizedProductWithinRounding()
    {
        var rng = new Random(5);
        const int rows = 16, k = 512;
        var w = RandomRows(rng, rows, k);
        var a = new QuantizedActivations(k);
        a.Quantize(IntegerDotTests.RandomFloats(rng, k));
        var y = new float[rows];
        RepackedQ4_0.ReferenceMatVec(w, rows, k, a.Values, a.Scales, y);
        var row = new float[k];
        for (int r = 0; r < rows; r++)
        {
            QuantTypes.DequantizeRowQ4_0(w.AsSpan(r * (k / 32) * Q4Bytes, k / 32 * Q4Bytes), row);
            double exact = 0, magnitude = 0;
            for (int i = 0; i < k; i++)
            {
                double term = (double)row[i] * a.Values[i] * a.Scales[i / 32];
                exact += term;
                magnitude += Math.Abs(term);
            }
            Assert.InRange(Math.Abs(y[r] - exact), 0, (k / 32 + 4) * Math.Pow(2, -23) * magnitude);
        }
    }

    [SkippableFact]
    public void QuantizedRowsEqualQuantizedActivations()
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "repacked Q4_0 needs AVX2 and FMA");
        var rng = new Random(8);
        const int m = 5, k = 96;
        var x = IntegerDotTests.RandomFloats(rng, m * k);
        var rowsQ8 = new Q8_0Rows();
        fixed (float* px = x) rowsQ8.Quantize(px, m, k);
        var a = new QuantizedActivations(k);
        for (int t = 0; t < m; t++)
        {
            a.Quantize(x.AsSpan(t * k, k));
            Assert.Equal(a.Values.ToArray(), rowsQ8.Values(t).ToArray());
            Assert.Equal(a.Scales.ToArray(), rowsQ8.Scales(t).ToArray());
        }
    }

    [SkippableFact]
    public void NonFiniteActivationMakesTheRowsNaN()
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "repacked Q4_0 needs AVX2 and FMA");
        var rng = new Random(9);
        const int rows = 8, k = 64;
        var w = RandomRows(rng, rows, k);
        var x = IntegerDotTests.RandomFloats(rng, 2 * k);
        x[k + 40] = float.PositiveInfinity;                       // token 1, block 1
        var q8 = new Q8_0Rows();
        var y = new float[2 * rows];
        fixed (float* px = x, py = y)
        {
            q8.Quantize(px, 2, k);
            new RepackedQ4_0(w, rows, k).MatMul(q8, py, rows, 0, 1);
        }
        Assert.All(y[..rows], v => Assert.True(float.IsFinite(v)));
        Assert.All(y[rows..], v => Assert.True(float.IsNaN(v)));
    }

    [SkippableFact]
    public void ForCachesPerTensorAndDeclinesWhatItCannotRepack()
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "repacked Q4_0 needs AVX2 and FMA");
        var rng = new Random(10);
        Tensor Q4(byte[] bytes, int rows) => Tensor.FromStorage(new CpuStorage(DType.Q4, bytes), [rows, bytes.Length / rows]);
        var w = Q4(RandomRows(rng, 16, 64), 16);
        var first = RepackedQ4_0.For(w);
        Assert.NotNull(first);
        Assert.Same(first, RepackedQ4_0.For(w));
        Assert.Null(RepackedQ4_0.For(Q4(RandomRows(rng, 12, 64), 12)));            // 12 rows: not groups of 8
        var infinite = RandomRows(rng, 8, 64);
        BitConverter.TryWriteBytes(infinite.AsSpan(5 * Q4Bytes, 2), (ushort)0x7C00);  // +inf scale in row 2, block 1
        Assert.Null(RepackedQ4_0.For(Q4(infinite, 8)));
    }

    [SkippableFact]
    public void PagesOfAMappedTensorAreReleasedWithoutLosingAByte()
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "repacked Q4_0 needs AVX2 and FMA");
        // 64 rows x 2048 weights = 73,728 bytes (18 pages) of a copy-on-write file mapping, as a GGUF tensor is
        // loaded. One page is written first (a private copy, as fine-tuning in place would make): releasing the
        // mapping's pages after the repack must keep it, and the untouched pages must read back from the file.
        const int rows = 64, k = 2048;
        var bytes = RandomRows(new Random(11), rows, k);
        string path = Path.Combine(Path.GetTempPath(), $"repack-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(path, bytes);
        try
        {
            using var map = System.IO.MemoryMappedFiles.MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, System.IO.MemoryMappedFiles.MemoryMappedFileAccess.CopyOnWrite);
            using var view = map.CreateViewAccessor(0, 0, System.IO.MemoryMappedFiles.MemoryMappedFileAccess.CopyOnWrite);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            try
            {
                p[5000] ^= 0x11;                                   // a private copy of page 1 (row 0's block 277)
                bytes[5000] ^= 0x11;
                var w = Tensor.FromStorage(new CpuStorage(DType.Q4, p, bytes.Length, view), [rows, bytes.Length / rows]);
                var packed = RepackedQ4_0.For(w);
                Assert.NotNull(packed);
                Assert.Equal(bytes, new ReadOnlySpan<byte>(p, bytes.Length).ToArray());
                var a = new QuantizedActivations(k);
                a.Quantize(IntegerDotTests.RandomFloats(new Random(12), k));
                var expected = new float[rows];
                RepackedQ4_0.ReferenceMatVec(bytes, rows, k, a.Values, a.Scales, expected);
                var y = new float[rows];
                fixed (float* py = y) packed.MatVec(a, py, 0, packed.Groups, accumulate: false);
                AssertBits(expected, y);
            }
            finally
            {
                view.SafeMemoryMappedViewHandle.ReleasePointer();
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    // Random Q4_0 rows: nibbles uniform, every 5th block all zeros (weight -8) or all 15; scales +-[2^-14, 4)
    // with some subnormal and zero halves.
    internal static byte[] RandomRows(Random rng, int rows, int k)
    {
        var bytes = new byte[rows * (k / 32) * Q4Bytes];
        rng.NextBytes(bytes);
        for (int b = 0; b < rows * (k / 32); b++)
        {
            var block = bytes.AsSpan(b * Q4Bytes, Q4Bytes);
            Half d = b % 11 == 3 ? BitConverter.UInt16BitsToHalf((ushort)(1 + b % 1000)) : b % 13 == 4 ? (Half)0 : (Half)((rng.NextDouble() * 4 - 2) * Math.Pow(2, -rng.Next(0, 12)));
            BitConverter.TryWriteBytes(block[..2], BitConverter.HalfToUInt16Bits(d));
            if (b % 5 == 1) block[2..].Fill(0);
            else if (b % 5 == 2) block[2..].Fill(0xFF);
        }
        return bytes;
    }

    private static void AssertBits(float[] expected, float[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]), $"row {i}: expected {expected[i]:R}, got {actual[i]:R}");
    }
}
