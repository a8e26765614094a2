// The GGUF container (GgufFile, GgufWriter): metadata of all 13 value types round-trips exactly,
// tensors land at aligned offsets in ggml's dimension order, and every kind of corruption, built byte
// by byte, truncated at every length or with bytes flipped at random, ends in a one-line
// InvalidDataException naming the file (never another exception, a hang or a large allocation).
using System.Buffers.Binary;
using System.Text;
using TinyLlama.Formats;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Formats.FormatTestUtil;

namespace TinyLlama.Tests.Formats;

/// <summary>Builds GGUF bytes field by field, to produce exactly the file a test wants.</summary>
internal sealed class GgufBytes
{
    private readonly MemoryStream ms = new();

    public GgufBytes Raw(ReadOnlySpan<byte> b) { ms.Write(b); return this; }
    public GgufBytes U32(uint v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, v); return Raw(b); }
    public GgufBytes U64(ulong v) { Span<byte> b = stackalloc byte[8]; BinaryPrimitives.WriteUInt64LittleEndian(b, v); return Raw(b); }
    public GgufBytes Str(string s) { var b = Encoding.UTF8.GetBytes(s); return U64((ulong)b.Length).Raw(b); }
    public GgufBytes Header(ulong tensors, ulong kvs, uint version = 3) => Raw("GGUF"u8).U32(version).U64(tensors).U64(kvs);
    public GgufBytes KvU32(string key, uint v) => Str(key).U32((uint)GgufValueType.UInt32).U32(v);
    public GgufBytes Tensor(string name, ulong[] ne, uint type, ulong offset)
    {
        Str(name).U32((uint)ne.Length);
        foreach (var n in ne) U64(n);
        return U32(type).U64(offset);
    }
    public GgufBytes PadTo(int alignment) { while (ms.Length % alignment != 0) ms.WriteByte(0); return this; }
    public GgufBytes Zeros(int n) => Raw(new byte[n]);
    public byte[] ToArray() => ms.ToArray();
}

public class GgufFileTests
{
    internal static Dictionary<string, GgufValue> EveryType() => new()
    {
        ["u8"] = GgufValue.UInt8(250),
        ["i8"] = GgufValue.Int8(-7),
        ["u16"] = GgufValue.UInt16(65000),
        ["i16"] = GgufValue.Int16(-32000),
        ["u32"] = GgufValue.UInt32(4_000_000_000),
        ["i32"] = GgufValue.Int32(-2_000_000_000),
        ["f32"] = GgufValue.Float32(1e-5f),
        ["bool.true"] = GgufValue.Bool(true),
        ["bool.false"] = GgufValue.Bool(false),
        ["string"] = GgufValue.String("héllo ▁wörld 🦙"),
        ["string.empty"] = GgufValue.String(""),
        ["u64"] = GgufValue.UInt64(ulong.MaxValue - 3),
        ["i64"] = GgufValue.Int64(long.MinValue + 5),
        ["f64"] = GgufValue.Float64(Math.PI),
        ["f32.nan"] = GgufValue.Float32(float.NaN),
        ["a.u8"] = GgufValue.Array(new byte[] { 0, 1, 255 }),
        ["a.i8"] = GgufValue.Array(new sbyte[] { -128, 0, 127 }),
        ["a.u16"] = GgufValue.Array(new ushort[] { 1, 65535 }),
        ["a.i16"] = GgufValue.Array(new short[] { -1, 2 }),
        ["a.u32"] = GgufValue.Array(new uint[] { 3, uint.MaxValue }),
        ["a.i32"] = GgufValue.Array(new int[] { -3, 4, 5 }),
        ["a.f32"] = GgufValue.Array(new float[] { 0.5f, -0f, float.PositiveInfinity }),
        ["a.bool"] = GgufValue.Array(new bool[] { true, false, true }),
        ["a.string"] = GgufValue.Array(new string[] { "a", "", "<0x0A>", "▁the" }),
        ["a.u64"] = GgufValue.Array(new ulong[] { ulong.MaxValue }),
        ["a.i64"] = GgufValue.Array(new long[] { long.MinValue, 0 }),
        ["a.f64"] = GgufValue.Array(new double[] { 1.0 / 3, double.Epsilon }),
        ["a.empty"] = GgufValue.Array(System.Array.Empty<int>()),
        ["a.nested"] = GgufValue.Array(new GgufArray[]
        {
            new(new string[] { "x", "y" }),
            new(new GgufArray[] { new(new double[] { 1, 2 }), new(System.Array.Empty<bool>()) }),
            new(new int[] { 7 }),
        }),
    };

    [Fact]
    public void MetadataOfEveryTypeRoundTrips()
    {
        using var dir = new TempDir();
        var md = EveryType();
        Assert.Equal(13, md.Values.Select(v => v.Type).Concat(md.Values.Select(v => v.AsArray()?.ElementType ?? v.Type)).Distinct().Count());
        string path = dir.File("meta.gguf");
        GgufWriter.Save(path, md, []);
        var file = GgufFile.Open(path);
        Assert.Equal(md.Keys, file.Metadata.Keys); // order kept
        foreach (var (key, value) in md)
            Assert.True(value.Equals(file.Metadata[key]), $"{key}: wrote {value}, read {file.Metadata[key]}");
        Assert.Empty(file.Tensors);
        Assert.Equal(1e-5, file.Metadata["f32"].AsFloat()); // widened through its shortest decimal
    }

    [Fact]
    public void ValueEqualityIsStructural()
    {
        Assert.NotEqual(GgufValue.UInt32(1), GgufValue.Int32(1));
        Assert.NotEqual(GgufValue.Array(new int[] { 1, 2 }), GgufValue.Array(new int[] { 1, 3 }));
        Assert.NotEqual(GgufValue.Array(new GgufArray[] { new(new int[] { 1 }) }), GgufValue.Array(new GgufArray[] { new(new uint[] { 1 }) }));
        Assert.Equal(GgufValue.Array(new GgufArray[] { new(new int[] { 1 }) }), GgufValue.Array(new GgufArray[] { new(new int[] { 1 }) }));
    }

    [Fact]
    public void TensorsAreAlignedInGgmlOrderAndViewTheFile()
    {
        using var dir = new TempDir();
        var g = new Generator(3);
        var a = Tensor.RandN([3, 5], g);
        var b = Tensor.RandN([7], g, DType.F16);
        var c = Tensor.RandN([2, 3, 4], g, DType.BF16);
        var q = Tensor.FromStorage(new CpuStorage(DType.Q8_0, RandomBlocks(2 * 68, 34, 5)), [2, 68]);
        string path = dir.File("t.gguf");
        var md = new Dictionary<string, GgufValue> { [GgufFile.AlignmentKey] = GgufValue.UInt32(64) };
        GgufWriter.Save(path, md, new Dictionary<string, Tensor> { ["a"] = a, ["b"] = b, ["c"] = c, ["q"] = q });
        var file = GgufFile.Open(path);
        Assert.Equal(64, file.Alignment);
        Assert.Equal(["a", "b", "c", "q"], file.Tensors.Select(t => t.Name));
        Assert.Equal([5L, 3], file.GetInfo("a").Dimensions);
        Assert.Equal([4L, 3, 2], file.GetInfo("c").Dimensions);
        Assert.Equal([64L, 2], file.GetInfo("q").Dimensions); // 68 bytes = 2 blocks of 32 weights
        Assert.Equal(8u, file.GetInfo("q").GgmlType);
        foreach (var t in file.Tensors) Assert.Equal(0, t.Offset % 64);
        AssertBitEqual(a, file.Get("a"), "a");
        AssertBitEqual(b, file.Get("b"), "b");
        AssertBitEqual(c, file.Get("c"), "c");
        Assert.Equal(TensorFileIO.BlockBytes(q).ToArray(), TensorFileIO.BlockBytes(file.Get("q")).ToArray());
        Assert.Equal(0, new FileInfo(path).Length % 64); // the last tensor is padded too
    }

    [Fact]
    public void WriterRejectsWhatGgufCannotHold()
    {
        using var dir = new TempDir();
        string path = dir.File("w.gguf");
        var q = Tensor.FromStorage(new CpuStorage(DType.Q4, new byte[20]), [1, 20]);
        Assert.Contains("18-byte block", Assert.Throws<ArgumentException>(() => GgufWriter.Save(path, [], new Dictionary<string, Tensor> { ["q"] = q })).Message);
        Assert.Contains("power of two", Assert.Throws<ArgumentException>(() => GgufWriter.Save(path, new Dictionary<string, GgufValue> { [GgufFile.AlignmentKey] = GgufValue.UInt32(24) }, [])).Message);
        Assert.False(File.Exists(path));
    }

    internal static byte[] RandomBlocks(int bytes, int blockBytes, int seed)
    {
        // Random quants with finite f16 scales (the first two bytes of each block).
        var rng = new Random(seed);
        var b = new byte[bytes];
        rng.NextBytes(b);
        for (int i = 0; i < bytes; i += blockBytes)
            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(i), BitConverter.HalfToUInt16Bits((Half)(rng.NextDouble() * 0.1)));
        return b;
    }

    // ---------------------------------------------------------------- corruption, one kind at a time

    private static InvalidDataException Fails(TempDir dir, byte[] bytes, out string path)
    {
        path = dir.File($"bad-{Guid.NewGuid():N}.gguf");
        File.WriteAllBytes(path, bytes);
        string p = path;
        return Assert.Throws<InvalidDataException>(() => GgufFile.Open(p));
    }

    private static void AssertFails(TempDir dir, byte[] bytes, params string[] fragments)
    {
        var e = Fails(dir, bytes, out string path);
        AssertMessage(e, path, fragments);
    }

    [Fact]
    public void HeaderProblems()
    {
        using var dir = new TempDir();
        AssertFails(dir, new byte[10], "shorter than the 24-byte GGUF header");
        AssertFails(dir, new GgufBytes().Raw("GGML"u8).U32(3).U64(0).U64(0).ToArray(), "not a GGUF file");
        AssertFails(dir, new GgufBytes().Header(0, 0, version: 2).ToArray(), "version 2 is not supported");
        AssertFails(dir, new GgufBytes().Header(0, 0, version: 1).ToArray(), "version 1 is not supported");
        AssertFails(dir, new GgufBytes().Header(0, 0, version: 0x03000000).ToArray(), "big-endian");
        AssertFails(dir, new GgufBytes().Header(0, 0, version: 7).ToArray(), "unknown GGUF version 7");
        AssertFails(dir, new GgufBytes().Header(0, 1UL << 40).ToArray(), "metadata entries", "more than");
        AssertFails(dir, new GgufBytes().Header(1UL << 40, 0).ToArray(), "tensors", "more than");
    }

    [Fact]
    public void MetadataProblems()
    {
        using var dir = new TempDir();
        AssertFails(dir, new GgufBytes().Header(0, 1).Str("k").U32(13).U32(0).ToArray(), "'k'", "unknown value type 13");
        AssertFails(dir, new GgufBytes().Header(0, 1).U64(1UL << 50).Zeros(8).ToArray(), "string length", "remaining");
        AssertFails(dir, new GgufBytes().Header(0, 1).Str("k").U32(8).U64(1000).Zeros(8).ToArray(), "string length 1000");
        AssertFails(dir, new GgufBytes().Header(0, 1).Str("k").U32(9).U32(5).U64(1UL << 40).Zeros(8).ToArray(), "'k'", "array of", "remaining");
        AssertFails(dir, new GgufBytes().Header(0, 1).Str("k").U32(9).U32(99).U64(0).ToArray(), "'k'", "unknown value type 99");
        AssertFails(dir, new GgufBytes().Header(0, 2).KvU32("k", 1).KvU32("k", 2).ToArray(), "'k'", "appears twice");
        AssertFails(dir, new GgufBytes().Header(0, 1).Str("k").U32(7).Raw([2]).ToArray(), "bool byte 2");
        AssertFails(dir, new GgufBytes().Header(0, 1).Str("k").U32(8).U64(2).Raw([0xC3, 0x28]).ToArray(), "not valid UTF-8");
        AssertFails(dir, new GgufBytes().Header(0, 1).KvU32(GgufFile.AlignmentKey, 48).ToArray(), "power of two");
        var deep = new GgufBytes().Header(0, 1).Str("k").U32(9);
        for (int i = 0; i < 100; i++) deep.U32(9).U64(1);
        AssertFails(dir, deep.U32(0).U64(0).ToArray(), "'k'", "nests arrays");
    }

    [Fact]
    public void TensorInfoProblems()
    {
        using var dir = new TempDir();
        byte[] File1(ulong[] ne, uint type, ulong offset, int data) =>
            new GgufBytes().Header(1, 0).Tensor("w", ne, type, offset).PadTo(32).Zeros(data).ToArray();
        AssertFails(dir, File1([4], 3, 0, 64), "'w'", "unsupported type 3 (Q4_1)");
        AssertFails(dir, File1([4], 77, 0, 64), "'w'", "unsupported type 77");
        AssertFails(dir, File1([4], 0, 16, 64), "'w'", "offset 16", "alignment 32");
        AssertFails(dir, File1([100], 0, 0, 64), "'w'", "runs past the end of the file");
        AssertFails(dir, File1([4], 0, 1UL << 62, 64), "'w'", "runs past the end");
        AssertFails(dir, File1([48], 2, 0, 64), "'w'", "row length 48", "Q4_0 block size 32");
        AssertFails(dir, File1([1UL << 33], 0, 0, 64), "'w'", "more than");
        AssertFails(dir, File1([1 << 20, 1 << 20], 0, 0, 64), "'w'", "more than");
        AssertFails(dir, new GgufBytes().Header(1, 0).Str("w").U32(5).Zeros(64).ToArray(), "'w'", "5 dimensions");
        AssertFails(dir, new GgufBytes().Header(2, 0).Tensor("w", [4], 0, 0).Tensor("w", [4], 0, 32).PadTo(32).Zeros(64).ToArray(), "'w'", "appears twice");
        AssertFails(dir, new GgufBytes().Header(2, 0).Tensor("a", [16], 0, 0).Tensor("b", [4], 0, 32).PadTo(32).Zeros(64).ToArray(), "'a'", "'b'", "overlap");
    }

    // ---------------------------------------------------------------- corruption at random

    [Fact]
    public void TruncatedOrFlippedFilesFailOnlyWithInvalidDataException()
    {
        using var dir = new TempDir();
        string valid = GgufModelTests.WriteSmallModelWithTokenizer(dir);
        byte[] bytes = File.ReadAllBytes(valid);
        var rng = new Random(11);
        int attempts = 0, failures = 0;

        void Try(byte[] data)
        {
            attempts++;
            string path = dir.File($"fuzz-{attempts}.gguf");
            File.WriteAllBytes(path, data);
            long before = GC.GetAllocatedBytesForCurrentThread();
            try
            {
                var file = GgufFile.Open(path);
                GgufModel.ReadTokenizer(file);
                var (config, weights) = GgufModel.Load(file);
                Assert.True(config.VocabSize > 0 && weights.Count > 0);
            }
            catch (InvalidDataException e)
            {
                failures++;
                Assert.DoesNotContain('\n', e.Message);
                Assert.Contains(path, e.Message);
            }
            catch (Exception e)
            {
                Assert.Fail($"attempt {attempts}: {e.GetType().Name}: {e.Message}");
            }
            finally
            {
                File.Delete(path);
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.True(allocated < 64L << 20, $"attempt {attempts} allocated {allocated} bytes for a {data.Length}-byte file");
        }

        // Every truncation in the header and metadata, then a sample through the tensor data.
        for (int n = 0; n < bytes.Length; n += n < 2048 ? 1 : 97) Try(bytes[..n]);
        int truncations = failures;
        Assert.Equal(attempts, truncations); // a truncated file never passes
        for (int i = 0; i < 600; i++)
        {
            var data = (byte[])bytes.Clone();
            // Flip 1-4 bytes, mostly in the metadata and tensor infos where structure lives.
            int flips = rng.Next(1, 5);
            for (int f = 0; f < flips; f++)
            {
                int at = rng.Next(4) == 0 ? rng.Next(data.Length) : rng.Next(Math.Min(data.Length, 4096));
                data[at] = (byte)rng.Next(256);
            }
            Try(data);
        }
        Assert.True(failures > truncations, "some flipped files should fail");
    }
}
