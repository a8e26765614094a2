// Regressions for the unclean classes the fuzz harness found (issue 13), one test per class, each built
// from the harness's own seeds with the one change the fuzzer made, and each error checked with the
// harness's classifier (FuzzRunner.Classify: a CLI error type, one line, naming the input's directory):
//   - a control character (newline) in a GGUF tensor name, a safetensors tensor name or an index's shard
//     name reached the message raw (a multi-line error): names now go through MessageText;
//   - a mangled tensor name (output.weight -> outrut.weight) reached LlamaForCausalLM.FromWeights, whose
//     message named no file: it now begins with the checkpoint's path;
//   - a GGUF tokenizer without a BOS or EOS id loaded, then Encode threw InvalidOperationException: now an
//     InvalidDataException naming the file;
//   - an adapter whose base_model_name_or_path is a directory with no config.json: the error named only
//     that directory, now also the adapter_config.json that pointed there.
using System.Text;
using TinyLlama.Cli;
using TinyLlama.Cli.Commands;
using TinyLlama.Cli.Fuzzing;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Formats;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Lora;

namespace TinyLlama.Tests.Fuzz;

public class UncleanClassTests
{
    // The harness's verdict on an error for an input in dir, and the error itself.
    private static void AssertClean(Exception e, string dir)
    {
        var (outcome, kind, message) = FuzzRunner.Classify(e, dir);
        Assert.True(outcome == FuzzOutcome.Clean, $"{kind}: {message}");
    }

    // The seed GGUF with one tensor name changed in place (same length, so the file stays well-formed); the
    // name is found with its u64 length prefix ("output.weight" alone is also the end of "attn_output.weight").
    private static string GgufWithTensorRenamed(TempDir dir, string from, string to)
    {
        Assert.Equal(from.Length, to.Length);
        var bytes = FuzzSeeds.Gguf(dir.Path);
        byte[] needle = [.. BitConverter.GetBytes((ulong)from.Length), .. Encoding.UTF8.GetBytes(from)];
        int at = bytes.AsSpan().IndexOf(needle);
        Assert.True(at > 0 && bytes.AsSpan(at + 1).IndexOf(needle) < 0, $"'{from}' is not in the seed exactly once");
        Encoding.UTF8.GetBytes(to).CopyTo(bytes, at + 8);
        string path = dir.File("model.gguf");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    // A newline in a tensor name (escaped, one line), and a mangled name reaching the model (named with the file).
    [Theory]
    [InlineData("outp\nt.weight", "'outp\\nt.weight'")]
    [InlineData("outrut.weight", "'outrut.weight'")]
    public void GgufTensorNameTheModelDoesNotKnow_IsOneLineNamingTheFile(string name, string shown)
    {
        using var dir = new TempDir();
        string path = GgufWithTensorRenamed(dir, "output.weight", name);
        var e = Assert.Throws<InvalidDataException>(() => ModelCommands.LoadModel(path, new ModelFiles(), Device.Cpu));
        Assert.Equal($"{path}: unexpected tensor {shown} (not a weight of this model)", e.Message);
        AssertClean(e, dir.Path);
    }

    [Fact]
    public void MangledSafetensorsTensorName_ErrorNamesTheCheckpoint()
    {
        using var dir = new TempDir();
        var weights = FuzzSeeds.Weights();
        weights["lm_heaf.weight"] = weights[LlamaWeightNames.LmHead];
        weights.Remove(LlamaWeightNames.LmHead);
        var config = FuzzSeeds.Config with { TieWordEmbeddings = false };
        File.WriteAllBytes(dir.File(Checkpoint.ConfigName), Encoding.UTF8.GetBytes(config.ToJson()));
        File.WriteAllBytes(dir.File(Checkpoint.SafetensorsName), FuzzSeeds.SafetensorsBytes(weights, dir.Path));
        // Untied and without lm_head.weight: the config's check names the directory first.
        var e = Assert.ThrowsAny<InvalidDataException>(() => ModelCommands.LoadModel(dir.Path, new ModelFiles(), Device.Cpu));
        Assert.StartsWith($"{dir.Path}: tensor 'lm_head.weight' is missing", e.Message);
        AssertClean(e, dir.Path);
        // Tied, the extra tensor is the model's complaint, and it names the directory too.
        File.WriteAllBytes(dir.File(Checkpoint.ConfigName), Encoding.UTF8.GetBytes((config with { TieWordEmbeddings = true }).ToJson()));
        e = Assert.ThrowsAny<InvalidDataException>(() => ModelCommands.LoadModel(dir.Path, new ModelFiles(), Device.Cpu));
        Assert.Equal($"{dir.Path}: unexpected tensor 'lm_heaf.weight' (not a weight of this model)", e.Message);
        AssertClean(e, dir.Path);
    }

    [Fact]
    public void NewlineInSafetensorsTensorName_IsEscaped()
    {
        using var dir = new TempDir();
        string path = dir.File("model.safetensors");
        FormatTestUtil.WriteRawSafetensors(path, """{"x\ny\u202E":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}""", new byte[4]);
        var e = Assert.Throws<InvalidDataException>(() => SafetensorsFile.Open(path));
        Assert.Equal($"{path}: tensor 'x\\ny\\u202E' has unknown dtype 'F99' (supported: {Safetensors.SupportedDTypeNames})", e.Message);
        AssertClean(e, dir.Path);
    }

    [Fact]
    public void NewlineInIndexShardName_IsEscaped()
    {
        using var dir = new TempDir();
        string index = dir.File(Checkpoint.IndexName);
        File.WriteAllText(index, """{"weight_map": {"a\r\nb": "sh\nard.safetensors"}}""");
        var e = Assert.Throws<InvalidDataException>(() => Checkpoint.LoadSharded(index));
        Assert.Equal($"{index}: shard file 'sh\\nard.safetensors' (holding 'a\\r\\nb') is missing from {dir.Path}", e.Message);
        AssertClean(e, dir.Path);
    }

    [Theory]
    [InlineData(GgufModel.Keys.BosId, "BOS")]
    [InlineData(GgufModel.Keys.EosId, "EOS")]
    public void GgufTokenizerWithoutBosOrEos_EncodingWithItIsAnErrorNamingTheFile(string key, string name)
    {
        using var dir = new TempDir();
        string path = dir.File("vocab.gguf");
        // The seed's tokenizer metadata with the id set to "none" (0xFFFFFFFF), as llama.cpp writes it.
        var metadata = GgufModel.TokenizerMetadata(FuzzSeeds.ByteTokenizer())
            .Select(kv => kv.Key == key ? new KeyValuePair<string, GgufValue>(key, GgufValue.UInt32(uint.MaxValue)) : kv).ToList();
        GgufWriter.Save(path, metadata, []);
        var tokenizer = GgufModel.LoadTokenizer(path);
        Assert.NotEmpty(tokenizer.Encode("ab"));   // without BOS and EOS it encodes
        var e = Assert.Throws<InvalidDataException>(() => tokenizer.Encode("ab", addBos: true, addEos: true));
        Assert.Equal($"{path}: the tokenizer has no {name} piece (its {name} id is absent or -1), but {name} is needed here", e.Message);
        AssertClean(e, dir.Path);
    }

    [Fact]
    public void AdapterOverADirectoryWithoutConfig_ErrorNamesTheAdapterConfig()
    {
        using var dir = new TempDir();
        string notAModel = Path.Combine(dir.Path, "empty");
        Directory.CreateDirectory(notAModel);
        string adapter = Path.Combine(dir.Path, "adapter");
        Directory.CreateDirectory(adapter);
        foreach (var (file, bytes) in FuzzSeeds.Adapter(notAModel, dir.Path)) File.WriteAllBytes(Path.Combine(adapter, file), bytes);
        var e = Assert.Throws<CliException>(() => ModelCommands.LoadModel(adapter, new ModelFiles(), Device.Cpu));
        Assert.Equal($"{Path.Combine(adapter, PeftAdapter.ConfigFileName)}: base_model_name_or_path '{notAModel}' is a directory with no config.json (not a model directory)", e.Message);
        AssertClean(e, adapter);
    }
}
