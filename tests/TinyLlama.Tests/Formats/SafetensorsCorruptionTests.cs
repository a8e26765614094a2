// Malformed safetensors files: one test per class of corruption, each expecting a one-line
// InvalidDataException naming the file and the problem; and a seeded fuzz run over truncated and
// bit-flipped files that must produce either tensors or that exception, never anything else.
using System.Buffers.Binary;
using TinyLlama.Formats;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Formats.FormatTestUtil;

namespace TinyLlama.Tests.Formats;

public class SafetensorsCorruptionTests
{
    private static InvalidDataException OpenFails(string path) =>
        Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));

    private static string Raw(TempDir dir, string header, int dataBytes, ulong? headerLength = null)
    {
        string path = dir.File("bad.safetensors");
        WriteRawSafetensors(path, header, new byte[dataBytes], headerLength);
        return path;
    }

    [Fact]
    public void FileShorterThanEightBytes()
    {
        using var dir = new TempDir();
        string path = dir.File("short.safetensors");
        File.WriteAllBytes(path, [1, 2, 3, 4, 5]);
        AssertMessage(OpenFails(path), path, "5 bytes", "shorter than the 8-byte header length");
        File.WriteAllBytes(path, []);
        AssertMessage(OpenFails(path), path, "0 bytes");
    }

    [Fact]
    public void HeaderLengthPastEndOfFile()
    {
        using var dir = new TempDir();
        string path = Raw(dir, "{}", 0, headerLength: 1000);
        AssertMessage(OpenFails(path), path, "header length 1000", "past the end of the file (10 bytes)");
    }

    [Fact]
    public void HeaderLengthAbsurd()
    {
        using var dir = new TempDir();
        string path = Raw(dir, "{}", 0, headerLength: ulong.MaxValue);
        AssertMessage(OpenFails(path), path, $"header length {ulong.MaxValue}", "absurd");
        path = Raw(dir, "{}", 0, headerLength: 100_000_001);
        AssertMessage(OpenFails(path), path, "absurd");
    }

    [Fact]
    public void HeaderNotJson()
    {
        using var dir = new TempDir();
        string path = Raw(dir, "{\"a\": {\"dtype\": ", 0);
        AssertMessage(OpenFails(path), path, "header is not valid JSON");
        path = dir.File("utf8.safetensors");
        var bytes = new byte[8 + 8];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 8);
        byte[] header = [(byte)'{', (byte)'"', 0xFF, 0xFE, (byte)'"', (byte)':', (byte)'1', (byte)'}']; // a key that is not UTF-8
        header.CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        AssertMessage(OpenFails(path), path, "JSON");
    }

    [Fact]
    public void HeaderNotAnObject()
    {
        using var dir = new TempDir();
        string path = Raw(dir, "[1, 2, 3]", 0);
        AssertMessage(OpenFails(path), path, "not a JSON object");
    }

    [Fact]
    public void UnknownDType()
    {
        using var dir = new TempDir();
        string path = Raw(dir, """{"w":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}""", 8);
        AssertMessage(OpenFails(path), path, "'w'", "unknown dtype 'Q9'");
        path = Raw(dir, """{"w":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}""", 16);
        AssertMessage(OpenFails(path), path, "'w'", "dtype I64", "not supported");
    }

    [Fact]
    public void NegativeShapeEntry()
    {
        using var dir = new TempDir();
        string path = Raw(dir, """{"w":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,8]}}""", 8);
        AssertMessage(OpenFails(path), path, "'w'", "negative shape entry -1");
    }

    [Fact]
    public void DataOffsetsOutOfRange()
    {
        using var dir = new TempDir();
        string path = Raw(dir, """{"w":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}}""", 16);
        AssertMessage(OpenFails(path), path, "'w'", "out of range", "16 bytes");
        path = Raw(dir, """{"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}""", 16);
        AssertMessage(OpenFails(path), path, "'w'", "non-negative");
    }

    [Fact]
    public void DataOffsetsEndBeforeBegin()
    {
        using var dir = new TempDir();
        string path = Raw(dir, """{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}""", 16);
        AssertMessage(OpenFails(path), path, "'w'", "end before begin");
    }

    [Fact]
    public void ByteCountDisagreesWithShape()
    {
        using var dir = new TempDir();
        string path = Raw(dir, """{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}""", 16);
        AssertMessage(OpenFails(path), path, "'w'", "spans 16 bytes", "needs 12");
    }

    [Fact]
    public void OverlappingTensors()
    {
        using var dir = new TempDir();
        string path = Raw(dir, """{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}""", 24);
        AssertMessage(OpenFails(path), path, "'a'", "'b'", "overlap");
    }

    // A writer's file (header space-padded to 8 bytes) with its header length field moved by delta.
    private static string WithHeaderLengthShifted(TempDir dir, long delta, bool pad)
    {
        string good = dir.File("good.safetensors");
        string header = """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[3],"data_offsets":[8,20]}}""";
        if (pad) header = header.PadRight((header.Length + 7) / 8 * 8 + 8);
        var data = new byte[20];
        for (int i = 0; i < data.Length; i++) data[i] = (byte)(0x41 + i); // never a space: a byte taken into the header shows
        WriteRawSafetensors(good, header, data, (ulong)((long)header.Length + delta));
        return good;
    }

    [Theory]
    [InlineData(-1, true)]
    [InlineData(1, true)]
    [InlineData(-1, false)]
    [InlineData(1, false)]
    [InlineData(-8, true)]
    public void HeaderLengthOffByABitIsRejected(long delta, bool pad)
    {
        using var dir = new TempDir();
        string path = WithHeaderLengthShifted(dir, delta, pad);
        var e = OpenFails(path);
        AssertMessage(e, path);
        Assert.True(e.Message.Contains("header length off") || e.Message.Contains("not valid JSON"), e.Message);
        Assert.DoesNotContain('\n', e.Message);
        // The same bytes with the right length open, and the data are where they were written.
        path = WithHeaderLengthShifted(dir, 0, pad);
        var file = SafetensorsFile.Open(path);
        Assert.Equal(new byte[] { 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48 }, FormatTestUtil.RawBytes(file.Get("a")));
    }

    [Theory]
    [InlineData("\t")]
    [InlineData("\n")]
    [InlineData("\0")]
    [InlineData("x")]
    public void HeaderPaddedWithOtherThanSpacesIsRejected(string padding)
    {
        using var dir = new TempDir();
        string path = Raw(dir, """{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  """ + padding + " ", 4);
        // White space JSON allows (tab, newline) is named as bad padding; other bytes make the JSON itself invalid.
        var e = OpenFails(path);
        AssertMessage(e, path);
        Assert.True(e.Message.Contains(padding.Trim() is "" ? "not one JSON object padded with spaces" : "not valid JSON"), e.Message);
        path = Raw(dir, " " + """{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4);
        AssertMessage(OpenFails(path), path, "starts with byte 0x20");
        path = Raw(dir, """{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}      """, 4);
        Assert.Equal(1, SafetensorsFile.Open(path).Count); // spaces are the padding the format allows
    }

    [Fact]
    public void TensorsMustCoverTheDataBufferExactly()
    {
        using var dir = new TempDir();
        string path = Raw(dir, """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}""", 12);
        AssertMessage(OpenFails(path), path, "bytes [4, 8)", "belong to no tensor", "'b'");
        path = Raw(dir, """{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8);
        AssertMessage(OpenFails(path), path, "bytes [0, 4)", "belong to no tensor");
        path = Raw(dir, """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 5);
        AssertMessage(OpenFails(path), path, "cover 4 bytes", "holds 5");
        path = Raw(dir, """{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}""", 4);
        Assert.Equal(2, SafetensorsFile.Open(path).Count); // an empty tensor at the end of the buffer covers nothing, and needs nothing
    }

    [Fact]
    public void MalformedEntriesAndMetadata()
    {
        using var dir = new TempDir();
        AssertMessage(OpenFails(Raw(dir, """{"w":[1,2]}""", 0)), dir.File("bad.safetensors"), "'w'", "must be an object");
        AssertMessage(OpenFails(Raw(dir, """{"w":{"shape":[1],"data_offsets":[0,4]}}""", 4)), dir.File("bad.safetensors"), "'w'", "dtype");
        AssertMessage(OpenFails(Raw(dir, """{"w":{"dtype":"F32","data_offsets":[0,4]}}""", 4)), dir.File("bad.safetensors"), "'w'", "shape");
        AssertMessage(OpenFails(Raw(dir, """{"w":{"dtype":"F32","shape":[1]}}""", 4)), dir.File("bad.safetensors"), "'w'", "data_offsets");
        AssertMessage(OpenFails(Raw(dir, """{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}""", 4)), dir.File("bad.safetensors"), "'w'", "not an integer");
        AssertMessage(OpenFails(Raw(dir, """{"__metadata__":{"k":1}}""", 0)), dir.File("bad.safetensors"), "__metadata__", "'k'");
        AssertMessage(OpenFails(Raw(dir, """{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8)), dir.File("bad.safetensors"), "'w'", "twice");
        AssertMessage(OpenFails(Raw(dir, """{"w":{"dtype":"F32","shape":[65536,65536],"data_offsets":[0,4]}}""", 4)), dir.File("bad.safetensors"), "'w'", "more than");
    }

    [Fact]
    public void RequestedTensorMissing()
    {
        using var dir = new TempDir();
        string path = dir.File("ok.safetensors");
        Safetensors.Save(path, new Dictionary<string, Tensor> { ["present"] = Tensor.Arange(3) });
        var file = SafetensorsFile.Open(path);
        AssertMessage(Assert.Throws<InvalidDataException>(() => file.Get("model.norm.weight")), path, "'model.norm.weight'", "not in the file");
    }

    [Fact]
    public void ShardFileMissing()
    {
        using var dir = new TempDir();
        Safetensors.Save(dir.File("model-00001-of-00002.safetensors"), new Dictionary<string, Tensor> { ["a"] = Tensor.Arange(3) });
        string index = dir.File(Checkpoint.IndexName);
        SafetensorsTests.WriteIndex(index, [("a", "model-00001-of-00002.safetensors"), ("b", "model-00002-of-00002.safetensors")]);
        var e = Assert.Throws<InvalidDataException>(() => Checkpoint.LoadDirectory(dir.Path));
        AssertMessage(e, index, "shard file 'model-00002-of-00002.safetensors'", "'b'", "missing");
    }

    [Fact]
    public void IndexProblemsAreNamed()
    {
        using var dir = new TempDir();
        Safetensors.Save(dir.File("s1.safetensors"), new Dictionary<string, Tensor> { ["a"] = Tensor.Arange(3) });
        string index = dir.File(Checkpoint.IndexName);
        SafetensorsTests.WriteIndex(index, [("a", "s1.safetensors"), ("c", "s1.safetensors")]);
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.LoadDirectory(dir.Path)), index, "'c'", "does not contain it");
        SafetensorsTests.WriteIndex(index, [("a", "../s1.safetensors")]);
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.LoadDirectory(dir.Path)), index, "not a plain file name");
        File.WriteAllText(index, "{\"metadata\": {}}");
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.LoadDirectory(dir.Path)), index, "weight_map");
        File.Delete(index);
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.LoadDirectory(dir.Path)), dir.Path, "neither model.safetensors nor");
    }

    [Fact]
    public void FuzzedFilesFailOnlyWithInvalidDataException()
    {
        using var dir = new TempDir();
        string good = dir.File("good.safetensors");
        var g = new Generator(11);
        Safetensors.Save(good, new Dictionary<string, Tensor>
        {
            ["a"] = Tensor.RandN([3, 4], g),
            ["b"] = Tensor.RandN([5], g, DType.BF16),
            ["c"] = Tensor.RandN([2, 2], g, DType.F16),
        }, new Dictionary<string, string> { ["format"] = "pt" });
        var original = File.ReadAllBytes(good);
        var rng = new Random(12345);
        int opened = 0, rejected = 0;
        for (int iter = 0; iter < 400; iter++)
        {
            var bytes = (byte[])original.Clone();
            if (iter % 4 == 0)
            {
                bytes = bytes.AsSpan(0, rng.Next(bytes.Length)).ToArray(); // truncate
            }
            else
            {
                // flip a few bytes, mostly inside the 8-byte length and the header where structure lives
                int headerEnd = 8 + (int)BinaryPrimitives.ReadUInt64LittleEndian(original);
                for (int k = rng.Next(1, 4); k > 0; k--)
                {
                    int at = rng.Next(10) < 8 ? rng.Next(headerEnd) : rng.Next(bytes.Length);
                    bytes[at] = (byte)rng.Next(256);
                }
            }
            string path = dir.File($"fuzz{iter}.safetensors");
            File.WriteAllBytes(path, bytes);
            try
            {
                var file = SafetensorsFile.Open(path);
                foreach (var name in file.Names) _ = FormatTestUtil.RawBytes(file.Get(name)); // touch every byte
                opened++;
            }
            catch (InvalidDataException e)
            {
                Assert.Contains(path, e.Message);
                Assert.DoesNotContain('\n', e.Message);
                rejected++;
            }
        }
        Assert.True(rejected > 100, $"only {rejected} of 400 corrupted files were rejected");
        Assert.True(opened > 0, "no mutated file opened (the fuzzer should sometimes only hit data bytes)");
    }
}
