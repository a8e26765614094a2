// Safetensors writer and reader: round trip of every supported dtype (including non-contiguous,
// scalar and empty tensors), metadata, the reference writer's header padding and ordering, atomic
// replacement, memory-mapped reads, and sharded checkpoints with an index.
using System.Buffers.Binary;
using System.Text.Json;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Formats.FormatTestUtil;

namespace TinyLlama.Tests.Formats;

public class SafetensorsTests
{
    private static Dictionary<string, Tensor> SampleTensors()
    {
        var g = new Generator(7);
        return new Dictionary<string, Tensor>
        {
            ["w.f32"] = Tensor.RandN([3, 5], g),
            ["w.f16"] = Tensor.RandN([4, 3], g, DType.F16),
            ["w.bf16"] = Tensor.RandN([7], g, DType.BF16),            // 14 bytes: the next tensor starts unaligned to 4
            ["w.f64"] = Tensor.RandN([2, 2], g, DType.F64),
            ["ids.i32"] = Tensor.FromArray(new[] { 1, -2, int.MaxValue }),
            ["transposed"] = Tensor.RandN([4, 6], g).Permute(1, 0),   // non-contiguous: stored dense
            ["scalar"] = Tensor.Scalar(3.25),
            ["empty"] = Tensor.Zeros([0, 3]),
        };
    }

    [Fact]
    public void RoundTripKeepsDTypesShapesBitsAndMetadata()
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        var tensors = SampleTensors();
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode \"quoted\"" };
        Safetensors.Save(path, tensors, metadata);

        var file = SafetensorsFile.Open(path);
        Assert.Equal(tensors.Count, file.Count);
        Assert.Equal(metadata, file.Metadata);
        foreach (var (name, t) in tensors)
        {
            Assert.True(file.Contains(name));
            var back = file.Get(name);
            AssertBitEqual(t, back, name);
            Assert.True(((CpuStorage)back.Storage).IsExternal, $"{name} should view the mapped file, not a copy");
        }
    }

    [Fact]
    public void WriterPadsHeaderAndOrdersByElementSizeThenName()
    {
        using var dir = new TempDir();
        string path = dir.File("a.safetensors");
        Safetensors.Save(path, SampleTensors());
        var bytes = File.ReadAllBytes(path);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, n % 8);
        var header = System.Text.Encoding.UTF8.GetString(bytes, 8, (int)n);
        Assert.EndsWith("}", header.TrimEnd(' '));
        Assert.True(header.Length - header.TrimEnd(' ').Length < 8);

        var file = SafetensorsFile.Open(path);
        // F64 (8 bytes) first, then the 4-byte types by name, then the 2-byte ones; empty tensors sort by
        // name among their dtype and take no bytes.
        Assert.Equal(["w.f64", "empty", "ids.i32", "scalar", "transposed", "w.f32", "w.bf16", "w.f16"], file.Names);
        foreach (var name in file.Names)
        {
            var e = file.GetInfo(name);
            Assert.Equal(0L, (8 + (long)n + e.Begin) % e.DType.SizeOf());
        }
        Assert.Equal(bytes.Length - 8 - (long)n, file.Names.Max(x => file.GetInfo(x).End));
    }

    [Fact]
    public void ReadsAnUnalignedTensor()
    {
        // A header of odd length (not padded) puts the F32 data at an odd address in the mapping.
        using var dir = new TempDir();
        string path = dir.File("odd.safetensors");
        var values = new[] { 1.5f, -2.25f, 1e-30f };
        var data = new byte[12];
        Buffer.BlockCopy(values, 0, data, 0, 12);
        string header = """{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}""";
        Assert.NotEqual(0, header.Length % 4);
        WriteRawSafetensors(path, header, data);
        Assert.Equal(values, SafetensorsFile.Open(path).Get("x").ToArray<float>());
    }

    [Fact]
    public void MappingIsReleasedWhenUnreachable()
    {
        // The mapping's finalizer releases the view once the file object and its tensors are garbage;
        // this exercises that path (a fault there would take the test process down).
        using var dir = new TempDir();
        string path = dir.File("gc.safetensors");
        Safetensors.Save(path, new Dictionary<string, Tensor> { ["a"] = Tensor.Arange(1000) });
        var weak = OpenAndDrop(path);
        for (int i = 0; i < 5 && weak.IsAlive; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        Assert.False(weak.IsAlive, "the mapped storage was not collected");
        File.Delete(path);
        Assert.False(File.Exists(path));
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static WeakReference OpenAndDrop(string path)
    {
        var t = SafetensorsFile.Open(path).Get("a");
        Assert.Equal(999f, t.ToArray<float>()[999]);
        return new WeakReference(t.Storage);
    }

    [Fact]
    public void SaveReplacesAnExistingFileAtomically()
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        File.WriteAllText(path, "an old, unrelated file");
        var first = new Dictionary<string, Tensor> { ["a"] = Tensor.Arange(6).Reshape(2, 3) };
        Safetensors.Save(path, first);
        var firstFile = SafetensorsFile.Open(path);
        var firstA = firstFile.Get("a");

        var second = new Dictionary<string, Tensor> { ["b"] = Tensor.Full([4], 2.5, DType.BF16) };
        Safetensors.Save(path, second);
        var secondFile = SafetensorsFile.Open(path);
        Assert.Equal(["b"], secondFile.Names);
        AssertBitEqual(second["b"], secondFile.Get("b"), "b");
        // The first mapping still shows the replaced file's contents: the new file is a new inode.
        Assert.Equal([0f, 1, 2, 3, 4, 5], firstA.ToArray<float>());
        Assert.Equal([path], Directory.GetFiles(dir.Path)); // no temp file left behind
    }

    [Fact]
    public void FailedSaveLeavesTheOldFileAndNoTempFile()
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        var good = new Dictionary<string, Tensor> { ["a"] = Tensor.Arange(4) };
        Safetensors.Save(path, good);
        var before = File.ReadAllBytes(path);

        var bad = new Dictionary<string, Tensor> { ["a"] = Tensor.Arange(4), ["q"] = Tensor.Zeros([8], DType.Q4) };
        Assert.Throws<ArgumentException>(() => Safetensors.Save(path, bad));
        var reserved = new Dictionary<string, Tensor> { ["__metadata__"] = Tensor.Arange(4) };
        Assert.Throws<ArgumentException>(() => Safetensors.Save(path, reserved));

        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Equal([path], Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void SaveRemovesTemporariesOfKilledWritersOnly()
    {
        // A writer killed mid-write leaves .NAME.PID.GUID.tmp; the next save of NAME removes it when PID no longer
        // runs, and keeps one whose process is alive (this one: a concurrent writer) and other files' temporaries.
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        string dead = dir.File($".model.safetensors.{int.MaxValue - 7}.0123456789abcdef0123456789abcdef.tmp");
        string live = dir.File($".model.safetensors.{Environment.ProcessId}.fedcba9876543210fedcba9876543210.tmp");
        string other = dir.File($".adapter_model.safetensors.{int.MaxValue - 7}.0123456789abcdef0123456789abcdef.tmp");
        foreach (var f in new[] { dead, live, other }) File.WriteAllText(f, "partial");
        Safetensors.Save(path, new Dictionary<string, Tensor> { ["a"] = Tensor.Arange(4) });
        Assert.False(File.Exists(dead));
        Assert.True(File.Exists(live));
        Assert.True(File.Exists(other));
        Assert.Equal([0f, 1, 2, 3], SafetensorsFile.Open(path).Get("a").ToArray<float>());
    }

    [Fact]
    public void ShardedCheckpointLoadsThroughTheIndex()
    {
        using var dir = new TempDir();
        var config = new LlamaConfig
        {
            VocabSize = 16, HiddenSize = 8, IntermediateSize = 12, NumHiddenLayers = 2,
            NumAttentionHeads = 2, NumKeyValueHeads = 1, MaxPositionEmbeddings = 32, RmsNormEps = 1e-5,
        };
        var g = new Generator(3);
        var all = LlamaWeightNames.Expected(config).ToDictionary(e => e.Name, e => Tensor.RandN(e.Shape, g));
        var names = all.Keys.ToList();
        var shard1 = names.Take(names.Count / 2).ToDictionary(n => n, n => all[n]);
        var shard2 = names.Skip(names.Count / 2).ToDictionary(n => n, n => all[n]);
        Safetensors.Save(dir.File("model-00001-of-00002.safetensors"), shard1);
        Safetensors.Save(dir.File("model-00002-of-00002.safetensors"), shard2);
        WriteIndex(dir.File(Checkpoint.IndexName),
            shard1.Keys.Select(n => (n, "model-00001-of-00002.safetensors")).Concat(shard2.Keys.Select(n => (n, "model-00002-of-00002.safetensors"))));
        config.Save(dir.File(Checkpoint.ConfigName));

        var weights = Checkpoint.LoadDirectory(dir.Path);
        Assert.Equal(all.Count, weights.Count);
        foreach (var (name, t) in all) AssertBitEqual(t, weights[name], name);

        var (loadedConfig, loadedWeights) = Checkpoint.Load(dir.Path);
        Assert.Equal(config, loadedConfig);
        foreach (var (name, t) in all) AssertBitEqual(t, loadedWeights[name], name);
    }

    internal static void WriteIndex(string path, IEnumerable<(string Name, string Shard)> map)
    {
        using var stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        w.WriteStartObject("metadata");
        w.WriteNumber("total_size", 0);
        w.WriteEndObject();
        w.WriteStartObject("weight_map");
        foreach (var (name, shard) in map) w.WriteString(name, shard);
        w.WriteEndObject();
        w.WriteEndObject();
    }
}
