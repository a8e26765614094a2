// Issue 13's text-encoding class through the CLI: invalid UTF-8 bytes or a lone surrogate escape ("\ud800",
// grammatical JSON but no text) in every JSON file a verb reads, config.json, tokenizer.json,
// adapter_config.json, a safetensors header, model.safetensors.index.json and tokenize --jsonl input, is one
// line naming the file and the line (Formats/JsonText.cs), exit 1, never a stack trace. tokenizer_config.json
// and generation_config.json are not read by any verb, so the same bytes there change nothing (exit 0).
using System.Text;
using System.Text.Json.Nodes;
using TinyLlama.Formats;
using TinyLlama.Tests.Formats;

namespace TinyLlama.Tests.Cli;

public class JsonEncodingTests
{
    // The two corruptions, each spelled as the bytes of a JSON string's content.
    public static TheoryData<string> Corruptions() => new() { "invalid-utf8", "lone-surrogate" };

    private static byte[] Bad(string corruption) => corruption == "invalid-utf8" ? [(byte)'a', 0xFF, (byte)'b'] : "a\\ud800b"u8.ToArray();

    // {"_note": "BAD", ...rest of the object}: a field no reader looks at, so only a check of the whole file finds it.
    private static void InjectIntoObject(string path, string corruption)
    {
        byte[] bytes = File.ReadAllBytes(path);
        int brace = Array.IndexOf(bytes, (byte)'{');
        byte[] field = [.. "\"_note\": \""u8, .. Bad(corruption), .. "\", "u8];
        File.WriteAllBytes(path, [.. bytes[..(brace + 1)], .. field, .. bytes[(brace + 1)..]]);
    }

    private static string CopyModel(TempDir dir, string model, string name)
    {
        string copy = dir.File(name);
        Directory.CreateDirectory(copy);
        foreach (var f in Directory.GetFiles(model)) File.Copy(f, Path.Combine(copy, Path.GetFileName(f)));
        return copy;
    }

    private static void AssertNamesFileAndLine(string[] args, string file, string? line = "line 1: ")
    {
        var (code, _, err) = CliRunner.Run(args);
        string message = CliRunner.AssertOneLineError(1, code, err);
        Assert.Contains(file, message);
        if (line is not null) Assert.Contains(line, message);
    }

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void ConfigJson(string corruption)
    {
        using var dir = new TempDir();
        var (model, _) = SftReliabilityTests.WriteModelAndData(dir);
        string copy = CopyModel(dir, model, "bad");
        string config = Path.Combine(copy, TinyLlama.Formats.Checkpoint.ConfigName);
        InjectIntoObject(config, corruption);
        AssertNamesFileAndLine(["info", "--model", copy], config);
        Assert.Equal(0, CliRunner.Run("info", "--model", model).Code); // not vacuous: the clean copy loads
    }

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void TokenizerJson(string corruption)
    {
        using var dir = new TempDir();
        var (model, _) = SftReliabilityTests.WriteModelAndData(dir);
        string copy = CopyModel(dir, model, "bad");
        string tokenizer = Path.Combine(copy, "tokenizer.json");
        InjectIntoObject(tokenizer, corruption);
        string jsonl = dir.File("in.jsonl");
        File.WriteAllText(jsonl, "{\"text\": \"Say hi.\"}\n");
        AssertNamesFileAndLine(["tokenize", "--tokenizer", copy, "--jsonl", jsonl], tokenizer);
        AssertNamesFileAndLine(["generate", "--model", copy, "--prompt", "Say", "--max-tokens", "1"], tokenizer);
        Assert.Equal(0, CliRunner.Run("tokenize", "--tokenizer", model, "--jsonl", jsonl).Code);
    }

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void FilesNoVerbReadsChangeNothing(string corruption)
    {
        using var dir = new TempDir();
        var (model, _) = SftReliabilityTests.WriteModelAndData(dir);
        foreach (var name in new[] { "tokenizer_config.json", "generation_config.json" })
            File.WriteAllBytes(Path.Combine(model, name), [.. "{\"x\": \""u8, .. Bad(corruption), .. "\"}"u8]);
        var (code, _, err) = CliRunner.Run("generate", "--model", model, "--prompt", "Say", "--max-tokens", "1", "--json");
        Assert.True(code == 0, err);
    }

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void AdapterConfigJson(string corruption)
    {
        using var dir = new TempDir();
        var (model, _) = SftReliabilityTests.WriteModelAndData(dir);
        string adapter = dir.File("adapter");
        Directory.CreateDirectory(adapter);
        string config = Path.Combine(adapter, TinyLlama.Training.Lora.PeftAdapter.ConfigFileName);
        File.WriteAllText(config, new JsonObject
        {
            ["peft_type"] = "LORA", ["r"] = 2, ["lora_alpha"] = 4, ["target_modules"] = new JsonArray("q_proj"), ["base_model_name_or_path"] = model,
        }.ToJsonString());
        InjectIntoObject(config, corruption);
        AssertNamesFileAndLine(["generate", "--model", adapter, "--prompt-ids", "1", "--max-tokens", "1"], config);
    }

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void SafetensorsHeader(string corruption)
    {
        using var dir = new TempDir();
        var (model, _) = SftReliabilityTests.WriteModelAndData(dir);
        string copy = CopyModel(dir, model, "bad");
        string weights = Path.Combine(copy, TinyLlama.Formats.Checkpoint.SafetensorsName);
        var file = SafetensorsFile.Open(weights);
        var tensors = file.Names.ToDictionary(n => n, n => file.Get(n).Clone());
        // A metadata value of six bytes, then overwritten in place by six others: the header keeps its length.
        Safetensors.Save(weights, tensors, new Dictionary<string, string> { ["note"] = "xxxxxx" });
        byte[] bytes = File.ReadAllBytes(weights);
        int at = bytes.AsSpan().IndexOf("xxxxxx"u8);
        byte[] bad = corruption == "invalid-utf8" ? [(byte)'x', (byte)'x', (byte)'x', (byte)'x', (byte)'x', 0xFF] : "\\ud800"u8.ToArray();
        bad.CopyTo(bytes, at);
        File.WriteAllBytes(weights, bytes);
        AssertNamesFileAndLine(["info", "--model", copy], weights);
    }

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void SafetensorsIndex(string corruption)
    {
        using var dir = new TempDir();
        var (model, _) = SftReliabilityTests.WriteModelAndData(dir);
        string copy = CopyModel(dir, model, "sharded");
        string shard = "model-00001-of-00001.safetensors";
        File.Move(Path.Combine(copy, TinyLlama.Formats.Checkpoint.SafetensorsName), Path.Combine(copy, shard));
        var map = new JsonObject();
        foreach (var name in SafetensorsFile.Open(Path.Combine(copy, shard)).Names) map[name] = shard;
        string index = Path.Combine(copy, TinyLlama.Formats.Checkpoint.IndexName);
        File.WriteAllText(index, new JsonObject { ["metadata"] = new JsonObject(), ["weight_map"] = map }.ToJsonString());
        Assert.Equal(0, CliRunner.Run("info", "--model", copy).Code); // not vacuous: the sharded layout loads
        InjectIntoObject(index, corruption);
        AssertNamesFileAndLine(["info", "--model", copy], index);
    }

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void TokenizeJsonlNamesTheLine(string corruption)
    {
        using var dir = new TempDir();
        var (model, _) = SftReliabilityTests.WriteModelAndData(dir);
        string jsonl = dir.File("in.jsonl");
        File.WriteAllBytes(jsonl, [.. "{\"text\": \"Say hi.\"}\n{\"text\": \""u8, .. Bad(corruption), .. "\"}\n"u8]);
        // Invalid bytes are found by the strict UTF-8 read of the whole file (byte offset); a lone surrogate by the line's reader.
        AssertNamesFileAndLine(["tokenize", "--tokenizer", model, "--jsonl", jsonl], jsonl, corruption == "invalid-utf8" ? "byte offset 31" : $"{jsonl}:2: ");
    }
}
