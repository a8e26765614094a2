// LoRA adapters in Hugging Face PEFT's on-disk layout: a save/load round trip reproduces the logits
// exactly; adapter_config.json carries PEFT's LoraConfig fields; the safetensors names are exactly
// PEFT's ("base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight"); every broken piece
// gives a one-line error that names the file, and leaves the model untouched; a merged model saves and
// reloads as a plain Hugging Face checkpoint.
using System.Text.Json;
using System.Text.Json.Nodes;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Formats;
using TinyLlama.Training.Lora;
using static TinyLlama.Tests.Training.LoraTests;

namespace TinyLlama.Tests.Training;

public class LoraPeftTests
{
    private static LlamaForCausalLM AdaptedModel(LoraConfig config, ulong adapterSeed = 3)
    {
        var model = new LlamaForCausalLM(TinyConfig(), new Generator(1));
        Lora.Apply(model, config, new Generator(2));
        RandomiseAdapters(model, adapterSeed);
        model.Eval();
        return model;
    }

    private static LlamaForCausalLM FreshBase()
    {
        var model = new LlamaForCausalLM(TinyConfig(), new Generator(1));
        model.Eval();
        return model;
    }

    private static string SaveAdapter(TempDir dir, LoraConfig? config = null)
    {
        config ??= AllTargets(rank: 4, alpha: 8, dropout: 0.05);
        PeftAdapter.Save(dir.Path, AdaptedModel(config), config, "TinyLlama/TinyLlama-1.1B-Chat-v1.0");
        return dir.Path;
    }

    [Fact]
    public void SaveThenLoadReproducesLogitsExactly()
    {
        using var dir = new TempDir();
        var config = AllTargets(rank: 4, alpha: 8, dropout: 0.05);
        var model = AdaptedModel(config);
        var expected = Logits(model);
        PeftAdapter.Save(dir.Path, model, config, "some/base");
        Assert.True(PeftAdapter.IsAdapterDirectory(dir.Path));

        var loaded = FreshBase();
        var back = PeftAdapter.Load(dir.Path, loaded);
        Assert.Equal((4, 8.0, 0.05), (back.Rank, back.Alpha, back.Dropout));
        Assert.Equal(LoraConfig.AllTargets, back.TargetModules);
        Assert.Equal(expected, Logits(loaded));
        // Loaded adapters are trainable, the base is frozen, as after Lora.Apply.
        Assert.All(loaded.NamedParameters(), p => Assert.Equal(p.Name.Contains(".lora_", StringComparison.Ordinal), p.Value.RequiresGrad));
        Assert.Equal("some/base", PeftAdapter.ReadConfig(dir.Path).BaseModelNameOrPath);
    }

    [Fact]
    public void ConfigHasPeftFieldsSortedAsPeftWritesThem()
    {
        using var dir = new TempDir();
        SaveAdapter(dir, new LoraConfig(4, 16, 0.05, ["q", "v_proj", "down"]));
        string text = File.ReadAllText(dir.File(PeftAdapter.ConfigFileName));
        using var doc = JsonDocument.Parse(text);
        var root = doc.RootElement;
        Assert.Equal("LORA", root.GetProperty("peft_type").GetString());
        Assert.Equal("CAUSAL_LM", root.GetProperty("task_type").GetString());
        Assert.Equal("4", root.GetProperty("r").GetRawText());
        Assert.Equal("16", root.GetProperty("lora_alpha").GetRawText()); // an int, as in PEFT
        Assert.Equal("0.05", root.GetProperty("lora_dropout").GetRawText());
        Assert.Equal(["q_proj", "v_proj", "down_proj"], root.GetProperty("target_modules").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal("none", root.GetProperty("bias").GetString());
        Assert.Equal(JsonValueKind.False, root.GetProperty("fan_in_fan_out").ValueKind);
        Assert.Equal(JsonValueKind.True, root.GetProperty("inference_mode").ValueKind);
        Assert.Equal("TinyLlama/TinyLlama-1.1B-Chat-v1.0", root.GetProperty("base_model_name_or_path").GetString());
        Assert.Equal(JsonValueKind.Null, root.GetProperty("modules_to_save").ValueKind);
        Assert.Equal(JsonValueKind.True, root.GetProperty("init_lora_weights").ValueKind);
        Assert.Equal(JsonValueKind.False, root.GetProperty("use_rslora").ValueKind);
        Assert.Equal(JsonValueKind.False, root.GetProperty("use_dora").ValueKind);
        var keys = root.EnumerateObject().Select(p => p.Name).ToList();
        Assert.Equal(keys.Order(StringComparer.Ordinal), keys);
        Assert.Contains("\n  \"alpha_pattern\": {}", text.ReplaceLineEndings("\n"));
    }

    [Fact]
    public void FractionalAlphaAndZeroDropoutRoundTrip()
    {
        using var dir = new TempDir();
        SaveAdapter(dir, new LoraConfig(2, 12.5, 0.0, ["k"]));
        using var doc = JsonDocument.Parse(File.ReadAllText(dir.File(PeftAdapter.ConfigFileName)));
        Assert.Equal("12.5", doc.RootElement.GetProperty("lora_alpha").GetRawText());
        Assert.Equal("0.0", doc.RootElement.GetProperty("lora_dropout").GetRawText());
        var (config, _) = PeftAdapter.ReadConfig(dir.Path);
        Assert.Equal((2, 12.5, 0.0), (config.Rank, config.Alpha, config.Dropout));
        Assert.Equal(["k_proj"], config.TargetModules);
    }

    [Fact]
    public void TensorNamesAreExactlyPeftNames()
    {
        using var dir = new TempDir();
        SaveAdapter(dir);
        var file = SafetensorsFile.Open(dir.File(PeftAdapter.WeightsFileName));
        var expected = new HashSet<string>();
        foreach (int i in new[] { 0, 1 })
            foreach (var m in new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj" })
                foreach (var ab in new[] { "lora_A", "lora_B" })
                    expected.Add($"base_model.model.model.layers.{i}.{m}.{ab}.weight");
        Assert.Equal(expected, file.Names.ToHashSet());
        Assert.Equal([4, 16], file.GetInfo("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").Shape);
        Assert.Equal([8, 4], file.GetInfo("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").Shape);
        Assert.Equal([4, 24], file.GetInfo("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight").Shape);
        Assert.Equal(DType.F32, file.GetInfo("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").DType);
        Assert.Equal("pt", file.Metadata["format"]);
        // Atomic writes leave no temporary files behind.
        Assert.Equal([PeftAdapter.ConfigFileName, PeftAdapter.WeightsFileName], Directory.GetFiles(dir.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void SaveRejectsAConfigThatDoesNotDescribeTheModel()
    {
        using var dir = new TempDir();
        var model = AdaptedModel(new LoraConfig(4, 8, 0, ["q", "v"]));
        Assert.Throws<ArgumentException>(() => PeftAdapter.Save(dir.Path, model, new LoraConfig(4, 8, 0, ["q"]), null));       // v has an adapter too
        Assert.Throws<ArgumentException>(() => PeftAdapter.Save(dir.Path, model, new LoraConfig(4, 8, 0, ["q", "v", "k"]), null)); // k has none
        Assert.Throws<ArgumentException>(() => PeftAdapter.Save(dir.Path, model, new LoraConfig(2, 8, 0, ["q", "v"]), null));  // rank
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void LoadAcceptsAMinimalHandWrittenConfigAndAllLinear()
    {
        using var dir = new TempDir();
        var model = AdaptedModel(AllTargets(rank: 4, alpha: 8));
        var expected = Logits(model);
        PeftAdapter.Save(dir.Path, model, AllTargets(rank: 4, alpha: 8), null);
        File.WriteAllText(dir.File(PeftAdapter.ConfigFileName), """{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "all-linear"}""");
        var loaded = FreshBase();
        var config = PeftAdapter.Load(dir.Path, loaded);
        Assert.Equal(0.0, config.Dropout);
        Assert.Equal(expected, Logits(loaded));
    }

    [Fact]
    public void MergedModelSavesAsAPlainCheckpoint()
    {
        using var dir = new TempDir();
        var model = AdaptedModel(AllTargets());
        var adapterLogits = Logits(model);
        Lora.Merge(model);
        string path = dir.File("model.safetensors");
        Safetensors.Save(path, model.StateDict());
        var reloaded = LlamaForCausalLM.FromWeights(TinyConfig(), SafetensorsFile.Open(path).GetAll());
        var logits = Logits(reloaded);
        Assert.Equal(Logits(model), logits);
        for (int i = 0; i < logits.Length; i++) Assert.True(Math.Abs(logits[i] - adapterLogits[i]) <= 1e-5, $"logit {i}");
    }

    // ---------------- broken pieces ----------------

    /// <summary>Loads into a fresh model, expects <typeparamref name="T"/>, checks the message is one line naming the file, and that the model was not touched.</summary>
    private static string LoadFails<T>(string dir, string file) where T : Exception
    {
        var model = FreshBase();
        var e = Assert.Throws<T>(() => PeftAdapter.Load(dir, model));
        Assert.Contains(file, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Empty(Lora.AdaptedLayers(model));
        Assert.All(model.Parameters(), p => Assert.True(p.RequiresGrad));
        return e.Message;
    }

    private static void EditConfig(TempDir dir, Action<JsonObject> edit)
    {
        string path = dir.File(PeftAdapter.ConfigFileName);
        var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(json);
        File.WriteAllText(path, json.ToJsonString());
    }

    [Fact]
    public void MissingConfigOrWeightsNameTheFile()
    {
        using var dir = new TempDir();
        Assert.False(PeftAdapter.IsAdapterDirectory(dir.Path));
        LoadFails<FileNotFoundException>(dir.Path, dir.File(PeftAdapter.ConfigFileName));
        SaveAdapter(dir);
        File.Delete(dir.File(PeftAdapter.WeightsFileName));
        LoadFails<FileNotFoundException>(dir.Path, dir.File(PeftAdapter.WeightsFileName));
        File.WriteAllBytes(dir.File("adapter_model.bin"), [0x80, 0x02]);
        Assert.Contains("not supported", LoadFails<InvalidDataException>(dir.Path, dir.File("adapter_model.bin")));
    }

    [Theory]
    [InlineData("r", "\"r\"")]
    [InlineData("lora_alpha", "\"lora_alpha\"")]
    [InlineData("target_modules", "\"target_modules\"")]
    [InlineData("peft_type", "\"peft_type\"")]
    public void MissingConfigFieldNamesFileAndField(string field, string inMessage)
    {
        using var dir = new TempDir();
        SaveAdapter(dir);
        EditConfig(dir, j => j.Remove(field));
        var message = LoadFails<InvalidDataException>(dir.Path, dir.File(PeftAdapter.ConfigFileName));
        Assert.Contains("missing field " + inMessage, message);
    }

    [Theory]
    [InlineData("target_modules", """["q_proj", "qkv_proj"]""", "unknown target module \"qkv_proj\"")]
    [InlineData("target_modules", "\".*q_proj\"", "regular expression")]
    [InlineData("peft_type", "\"IA3\"", "only \"LORA\"")]
    [InlineData("r", "0", "positive integer")]
    [InlineData("r", "\"4\"", "positive integer")]
    [InlineData("lora_dropout", "1.5", "[0, 1)")]
    [InlineData("use_dora", "true", "use_dora")]
    [InlineData("use_rslora", "true", "use_rslora")]
    [InlineData("bias", "\"all\"", "bias")]
    [InlineData("modules_to_save", """["lm_head"]""", "modules_to_save")]
    [InlineData("rank_pattern", """{"q_proj": 8}""", "rank_pattern")]
    public void BadConfigValuesAreRejected(string field, string json, string inMessage)
    {
        using var dir = new TempDir();
        SaveAdapter(dir);
        EditConfig(dir, j => j[field] = JsonNode.Parse(json));
        Assert.Contains(inMessage, LoadFails<InvalidDataException>(dir.Path, dir.File(PeftAdapter.ConfigFileName)));
    }

    [Fact]
    public void ConfigThatIsNotJsonNamesTheFile()
    {
        using var dir = new TempDir();
        SaveAdapter(dir);
        string path = dir.File(PeftAdapter.ConfigFileName);
        File.WriteAllText(path, File.ReadAllText(path)[..40]);
        Assert.Contains("not valid JSON", LoadFails<InvalidDataException>(dir.Path, path));
    }

    [Fact]
    public void ShapeMismatchNamesFileAndTensor()
    {
        using var dir = new TempDir();
        SaveAdapter(dir);
        EditConfig(dir, j => j["r"] = 8);
        var message = LoadFails<InvalidDataException>(dir.Path, dir.File(PeftAdapter.WeightsFileName));
        Assert.Contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", message);
        Assert.Contains("shape [4, 16], expected [8, 16]", message);
    }

    [Fact]
    public void MissingAndUnexpectedTensorsNameFileAndTensor()
    {
        using var dir = new TempDir();
        SaveAdapter(dir);
        string path = dir.File(PeftAdapter.WeightsFileName);
        var all = SafetensorsFile.Open(path).GetAll().ToDictionary(kv => kv.Key, kv => kv.Value.Clone());
        const string dropped = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight";

        var fewer = new Dictionary<string, Tensor>(all);
        fewer.Remove(dropped);
        Safetensors.Save(path, fewer);
        var message = LoadFails<InvalidDataException>(dir.Path, path);
        Assert.Contains($"'{dropped}' is missing", message);

        var more = new Dictionary<string, Tensor>(all) { ["base_model.model.lm_head.lora_A.weight"] = Tensor.Zeros([4, 16]) };
        Safetensors.Save(path, more);
        message = LoadFails<InvalidDataException>(dir.Path, path);
        Assert.Contains("unexpected tensor 'base_model.model.lm_head.lora_A.weight'", message);

        // Unprefixed names (the model's own, not PEFT's) are reported as missing.
        Safetensors.Save(path, all.ToDictionary(kv => kv.Key["base_model.model.".Length..], kv => kv.Value));
        LoadFails<InvalidDataException>(dir.Path, path);
    }

    [Fact]
    public void TruncatedWeightsNameTheFile()
    {
        using var dir = new TempDir();
        SaveAdapter(dir);
        string path = dir.File(PeftAdapter.WeightsFileName);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length - 100)]);
        LoadFails<InvalidDataException>(dir.Path, path);
    }

    [Fact]
    public void LoadingOntoAModelThatHasAdaptersIsRejected()
    {
        using var dir = new TempDir();
        SaveAdapter(dir);
        var model = AdaptedModel(new LoraConfig(2, 4, 0, ["q"]));
        Assert.Throws<InvalidOperationException>(() => PeftAdapter.Load(dir.Path, model));
    }
}
