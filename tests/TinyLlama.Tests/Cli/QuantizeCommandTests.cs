// The int4 path through the CLI, end to end on tiny-random-llama (../shared/reference; skipped where absent):
// `quantize` to every type writes a GGUF that info, generate, perplexity and chat load (with the tokenizer
// inside it), rows that are not whole 32-blocks (its FFN width is 172) stay f16, GPTQ runs on a .ids
// calibration file with and without act-order and scale search, perplexity --ids-file is the token-weighted
// mean of its sequences, sft trains LoRA over a q4_0 GGUF into a PEFT adapter that generate loads over the
// GGUF and over the f32 base, quantize merges such an adapter, full fine-tuning of blocks is refused in one line,
// and bad files and flags give one line naming them.
using System.Text.Json;
using System.Text.Json.Nodes;
using TinyLlama.Formats;
using TinyLlama.Tensors;
using TinyLlama.Tests.Formats;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Cli;

/// <summary>tiny-random-llama quantized once per type for the whole class (each quantize run takes ~0.5 s).</summary>
public sealed class QuantizedReferenceModels : IDisposable
{
    private readonly Dictionary<string, string> paths = [];

    public TempDir Dir { get; } = new();

    /// <summary>The GGUF of tiny-random-llama in <paramref name="type"/> (RTN), written on first use.</summary>
    public string Get(string type)
    {
        lock (paths)
        {
            if (paths.TryGetValue(type, out var path)) return path;
            path = Dir.File($"tiny.{type}.gguf");
            var (code, output, err) = CliRunner.Run("quantize", "--model", SharedData.Require("tiny-random-llama"), "--out", path, "--type", type);
            Assert.True(code == 0, err);
            Assert.StartsWith($"wrote {path}: {type}", output);
            paths[type] = path;
            return path;
        }
    }

    public void Dispose() => Dir.Dispose();
}

public class QuantizeCommandTests(QuantizedReferenceModels models) : IClassFixture<QuantizedReferenceModels>
{
    private const string Text = "Once upon a time there was a llama.";

    private static string Reference() => SharedData.Require("tiny-random-llama");

    private static JsonElement Json(string output) => JsonDocument.Parse(output.Trim()).RootElement;

    private static double MeanNll(params string[] args)
    {
        var (code, output, err) = CliRunner.Run(["perplexity", .. args, "--json"]);
        Assert.True(code == 0, err);
        return Json(output).GetProperty("mean_nll").GetDouble();
    }

    [SkippableTheory]
    [InlineData("f32", "float32")]
    [InlineData("f16", "float16,float32")]
    [InlineData("bf16", "bfloat16,float32")]
    [InlineData("q8_0", "float16,float32,q8_0")]
    [InlineData("q4_0", "float16,float32,q4_0,q8_0")]
    public void EveryTypeLoadsInInfoGenerateAndPerplexity(string type, string dtypes)
    {
        string dir = Reference(), gguf = models.Get(type);
        var info = CliRunner.Run("info", "--model", gguf);
        Assert.True(info.Code == 0, info.Err);
        var dtypeLine = info.Out.Split('\n').Single(l => l.StartsWith("dtype: ", StringComparison.Ordinal));
        Assert.Equal(dtypes, string.Join(",", dtypeLine["dtype: ".Length..].Split(',').Order(StringComparer.Ordinal)));
        Assert.Contains("\"intermediate_size\": 172", info.Out);

        // The tokenizer comes from the GGUF: no --tokenizer, no directory beside it.
        var gen = CliRunner.Run("generate", "--model", gguf, "--prompt", Text, "--max-tokens", "4", "--json");
        Assert.True(gen.Code == 0, gen.Err);
        Assert.Equal(4, Json(gen.Out).GetProperty("ids").GetArrayLength());

        // f32 holds the same numbers as the HF directory: the same NLL to the last bit. The others round the
        // weights; on this random model (NLL near ln 32000 = 10.37, logits within ~0.1 of each other) that
        // moves the NLL by < 0.01 (observed: 2e-6 f16, 2e-3 q8_0, 1e-2 q4_0); 0.05 bounds them all.
        double reference = MeanNll("--model", dir, "--text", Text), quantized = MeanNll("--model", gguf, "--text", Text);
        if (type == "f32") Assert.Equal(reference, quantized);
        else Assert.True(Math.Abs(quantized - reference) < 0.05, $"{type}: mean NLL {quantized} vs f32 {reference}");
    }

    [SkippableTheory]
    [InlineData("q8_0", "q8_0")]
    [InlineData("q4_0", "q4_0")]
    public void RowsThatAreNotWholeBlocksStayF16(string type, string name)
    {
        var file = GgufFile.Open(models.Get(type));
        var blockType = type == "q4_0" ? DType.Q4 : DType.Q8_0;
        Assert.Equal(name, blockType.Name());
        // K = 172 (down) is not a multiple of 32; gate and up have K = 64 (172 rows is fine).
        for (int layer = 0; layer < 2; layer++)
        {
            Assert.Equal(DType.F16, file.GetInfo($"blk.{layer}.ffn_down.weight").DType);
            Assert.Equal(blockType, file.GetInfo($"blk.{layer}.ffn_gate.weight").DType);
            Assert.Equal(blockType, file.GetInfo($"blk.{layer}.attn_q.weight").DType);
        }
        Assert.Equal(DType.Q8_0, file.GetInfo("token_embd.weight").DType); // --keep's default
        Assert.Equal(DType.F32, file.GetInfo("output_norm.weight").DType);
    }

    [SkippableFact]
    public void GptqOnAnIdsFileWithAndWithoutActOrder()
    {
        string dir = Reference();
        string ids = models.Dir.File("calib.ids");
        File.WriteAllText(ids, "1 450 2041 263 931 17 99 1000\n1,15043,29892,920,4\n\n1 3 4 5 6 7 8 9 10 11 12\n");
        var blocks = new List<byte[]>();
        foreach (var extra in new[] { Array.Empty<string>(), ["--act-order"], ["--scale-search", "none"] })
        {
            string outPath = models.Dir.File($"gptq{extra.Length}.gguf");
            var (code, output, err) = CliRunner.Run(["quantize", "--model", dir, "--out", outPath, "--type", "q4_0", "--method", "gptq", "--calib", ids, "--calib-length", "6", .. extra]);
            Assert.True(code == 0, err);
            Assert.Contains(extra.Length == 0 ? "q4_0 (gptq)" : extra[0] == "--act-order" ? "q4_0 (gptq, act-order)" : "q4_0 (gptq, no scale search)", output);
            // 3 non-empty lines, cut to 6 tokens: 6 + 5 + 6.
            Assert.Contains("calibration: 3 sequences, 17 tokens from " + ids, err);
            Assert.Contains("quantized 3/3", err); // 2 layers, then the q8_0 head
            Assert.True(MeanNll("--model", outPath, "--text", Text) is var nll && Math.Abs(nll - MeanNll("--model", dir, "--text", Text)) < 0.05);
            blocks.Add(TensorFileIO.BlockBytes(GgufFile.Open(outPath).Get("blk.0.attn_q.weight")).ToArray());
        }
        blocks.Add(TensorFileIO.BlockBytes(GgufFile.Open(models.Get("q4_0")).Get("blk.0.attn_q.weight")).ToArray());
        // GPTQ, GPTQ with act-order, GPTQ without scale search and RTN pick different blocks for the same weight.
        for (int a = 0; a < blocks.Count; a++)
            for (int b = a + 1; b < blocks.Count; b++) Assert.False(blocks[a].AsSpan().SequenceEqual(blocks[b]), $"variants {a} and {b} wrote the same blocks");
    }

    [SkippableFact]
    public void PerplexityOfAnIdsFileIsTheTokenWeightedMeanOfItsSequences()
    {
        string gguf = models.Get("q4_0");
        int[][] sequences = [[1, 450, 2041, 263, 931, 17, 99, 1000, 5, 6], [1, 15043, 29892], [1, 3, 4, 5, 6, 7]];
        string all = models.Dir.File("all.ids");
        File.WriteAllText(all, string.Join("\n", sequences.Select(s => string.Join(' ', s))) + "\n\n");
        var (code, output, err) = CliRunner.Run("perplexity", "--model", gguf, "--ids-file", all, "--json");
        Assert.True(code == 0, err);
        var json = Json(output);
        Assert.Equal(sequences.Sum(s => s.Length), json.GetProperty("tokens").GetInt32());

        double sum = 0;
        int predicted = 0;
        for (int i = 0; i < sequences.Length; i++)
        {
            string one = models.Dir.File($"one{i}.ids");
            File.WriteAllText(one, string.Join(',', sequences[i]));
            sum += MeanNll("--model", gguf, "--ids-file", one) * (sequences[i].Length - 1);
            predicted += sequences[i].Length - 1;
        }
        // The same per-sequence sums combined in the same order: equal up to the rounding of the division.
        Assert.Equal(sum / predicted, json.GetProperty("mean_nll").GetDouble(), 12);
        Assert.Equal(Math.Exp(sum / predicted), json.GetProperty("perplexity").GetDouble(), 8);
        var text = CliRunner.Run("perplexity", "--model", gguf, "--ids-file", all);
        Assert.Contains("(16 predicted, 3 sequences)", text.Out);
    }

    [SkippableFact]
    public void SftTrainsLoraOverAQ4_0GgufAndTheAdapterLoadsOverTheGgufAndTheF32Base()
    {
        string dir = Reference(), gguf = models.Get("q4_0");
        string adapter = Path.Combine(models.Dir.Path, "adapter");
        var (code, output, err) = CliRunner.Run("sft", "--model", gguf, "--data", Path.Combine(dir, "sft_sample.json"), "--format", "alpaca", "--out", adapter,
            "--batch-size", "1", "--lr", "1e-2", "--no-shuffle", "--json", "--steps", "3", "--lora-rank", "4");
        Assert.True(code == 0, err);
        Assert.Equal(3, output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        Assert.True(File.Exists(Path.Combine(adapter, "adapter_model.safetensors")));
        Assert.Equal(gguf, TinyLlama.Training.Lora.PeftAdapter.ReadConfig(adapter).BaseModelNameOrPath);

        // generate and perplexity on the adapter directory: the GGUF base (and its tokenizer) plus the adapter.
        var gen = CliRunner.Run("generate", "--model", adapter, "--prompt", "Name a primary color.", "--max-tokens", "3", "--json");
        Assert.True(gen.Code == 0, gen.Err);
        double baseNll = MeanNll("--model", gguf, "--text", Text), onGguf = MeanNll("--model", adapter, "--text", Text);
        Assert.NotEqual(baseNll, onGguf); // three steps at lr 1e-2 moved B off zero

        // The same adapter over the f32 base once its config names it: the same function up to the q4_0
        // rounding of the base (as in EveryTypeLoadsInInfoGenerateAndPerplexity, < 0.05 in NLL here).
        string onF32 = Path.Combine(models.Dir.Path, "adapter-f32");
        Directory.CreateDirectory(onF32);
        File.Copy(Path.Combine(adapter, "adapter_model.safetensors"), Path.Combine(onF32, "adapter_model.safetensors"));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!;
        config["base_model_name_or_path"] = dir;
        File.WriteAllText(Path.Combine(onF32, "adapter_config.json"), config.ToJsonString());
        var genF32 = CliRunner.Run("generate", "--model", onF32, "--prompt", "Name a primary color.", "--max-tokens", "3", "--json");
        Assert.True(genF32.Code == 0, genF32.Err);
        double f32Nll = MeanNll("--model", onF32, "--text", Text);
        Assert.True(Math.Abs(f32Nll - onGguf) < 0.05, $"adapter over f32 {f32Nll} vs over q4_0 {onGguf}");

        // quantize merges the adapter into the dequantized base and quantizes again.
        string merged = models.Dir.File("merged.gguf");
        var quantized = CliRunner.Run("quantize", "--model", adapter, "--out", merged, "--type", "q8_0");
        Assert.True(quantized.Code == 0, quantized.Err);
        Assert.Contains("4 LoRA adapters merged", quantized.Out); // q and v of 2 layers, sft's default targets
        Assert.True(Math.Abs(MeanNll("--model", merged, "--text", Text) - onGguf) < 0.05);
    }

    [SkippableFact]
    public void FullFineTuningOfBlockWeightsIsRefusedInOneLine()
    {
        string dir = Reference(), gguf = models.Get("q4_0");
        string outDir = Path.Combine(models.Dir.Path, "full");
        var (code, _, err) = CliRunner.Run("sft", "--model", gguf, "--data", Path.Combine(dir, "sft_sample.json"), "--format", "alpaca", "--out", outDir,
            "--batch-size", "1", "--lr", "1e-3", "--steps", "1");
        Assert.Equal(1, code);
        Assert.Equal($"tinyllama: --model: {gguf} holds q8_0 and q4_0 weights, which full fine-tuning cannot update; train LoRA adapters over them with --lora-rank R, or start from a float model\n", err.ReplaceLineEndings("\n"));
        Assert.False(Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any());
    }

    [SkippableFact]
    public void ChatReadsTheTokenizerFromTheGguf()
    {
        string gguf = models.Get("q4_0");
        var generated = CliRunner.Run("generate", "--model", gguf, "--prompt", Text, "--max-tokens", "6");
        Assert.True(generated.Code == 0, generated.Err);
        var chat = CliRunner.RunWithInput(Text + "\n", "chat", "--model", gguf, "--template", "raw", "--max-tokens", "6");
        Assert.True(chat.Code == 0, chat.Err);
        Assert.Equal(generated.Out[..^1].Replace('\r', ' ').Replace('\n', ' ') + "\n", chat.Out);
    }

    [SkippableFact]
    public void FloatTypesKeepTheTablesInKeepsFormat()
    {
        string gguf = models.Dir.File("f16-keep.gguf");
        var (code, output, err) = CliRunner.Run("quantize", "--model", models.Get("q4_0"), "--out", gguf, "--type", "f16", "--keep", "f32");
        Assert.True(code == 0, err);
        Assert.Contains("(14 float16, 7 float32)", output); // the q4_0 source is expanded; the tables in f32
        var file = GgufFile.Open(gguf);
        Assert.Equal(DType.F32, file.GetInfo("token_embd.weight").DType);
        Assert.Equal(DType.F32, file.GetInfo("output.weight").DType);
        Assert.Equal(DType.F16, file.GetInfo("blk.0.attn_q.weight").DType);
    }

    [SkippableFact]
    public void AGgufIsParsedOncePerCommandForTheWeightsAndTheTokenizer()
    {
        string gguf = models.Get("q8_0");
        var files = new TinyLlama.Cli.Commands.ModelFiles();
        var model = TinyLlama.Cli.Commands.ModelCommands.LoadModel(gguf, files);
        Assert.Equal(1, files.Parsed);
        var opened = files.Gguf(gguf);
        Assert.Same(opened, files.Gguf(Path.GetRelativePath(Environment.CurrentDirectory, gguf))); // by full path
        Assert.True(TinyLlama.Cli.Commands.ModelCommands.HasTokenizer(gguf, null, files));
        var tok = TinyLlama.Cli.Commands.ModelCommands.LoadTokenizer(gguf, null, files);
        Assert.Equal(1, files.Parsed);
        // The tokenizer read from the shared file is the one a fresh parse gives.
        Assert.Equal(GgufModel.LoadTokenizer(gguf).Encode(Text), tok.Encode(Text));
        Assert.Equal(32000, model.Config.VocabSize);
    }

    /// <summary>Bad files and values that need files to exist: one line naming the flag or file, exit code 1.</summary>
    [SkippableTheory]
    [InlineData("perplexity-oov", "--ids-file", "line 2: '32000' is not a token id below the vocabulary size 32000")]
    [InlineData("perplexity-nan", "--ids-file", "line 1: '1.5' is not a token id")]
    [InlineData("perplexity-short", "--ids-file", "line 1: 1 ids, expected 2 to 512")]
    [InlineData("perplexity-long", "--ids-file", "line 1: 513 ids, expected 2 to 512")]
    [InlineData("calib-oov", "--calib", "line 1: '-1' is not a token id")]
    [InlineData("corrupt-quantize", "bad.gguf", "")]
    [InlineData("corrupt-info", "bad.gguf", "")]
    [InlineData("corrupt-generate", "bad.gguf", "")]
    [InlineData("truncated-perplexity", "cut.gguf", "")]
    [InlineData("out-dir", "--out", "does not exist")]
    public void BadFilesGiveOneLineNamingThem(string scenario, string named, string fragment)
    {
        string dir = Reference();
        var tmp = models.Dir;
        string File(string name, string content)
        {
            string path = tmp.File(scenario + "-" + name);
            System.IO.File.WriteAllText(path, content);
            return path;
        }
        string bad = tmp.File("bad.gguf"), cut = tmp.File("cut.gguf");
        System.IO.File.WriteAllText(bad, "GGUF this is not a GGUF file");
        using (var source = System.IO.File.OpenRead(models.Get("q8_0")))
        using (var target = System.IO.File.Create(cut))
        {
            var head = new byte[source.Length / 2];
            source.ReadExactly(head);
            target.Write(head);
        }
        string[] args = scenario switch
        {
            "perplexity-oov" => ["perplexity", "--model", dir, "--ids-file", File("x.ids", "1 2 3\n1 32000\n")],
            "perplexity-nan" => ["perplexity", "--model", dir, "--ids-file", File("x.ids", "1 1.5\n")],
            "perplexity-short" => ["perplexity", "--model", dir, "--ids-file", File("x.ids", "1\n1 2\n")],
            "perplexity-long" => ["perplexity", "--model", dir, "--ids-file", File("x.ids", string.Join(' ', Enumerable.Repeat(5, 513)))],
            "calib-oov" => ["quantize", "--model", dir, "--out", tmp.File("c.gguf"), "--type", "q4_0", "--method", "gptq", "--calib", File("x.ids", "1 -1\n")],
            "corrupt-quantize" => ["quantize", "--model", bad, "--out", tmp.File("c.gguf"), "--type", "q4_0"],
            "corrupt-info" => ["info", "--model", bad],
            "corrupt-generate" => ["generate", "--model", bad, "--prompt", "a", "--max-tokens", "2"],
            "truncated-perplexity" => ["perplexity", "--model", cut, "--text", "a"],
            "out-dir" => ["quantize", "--model", dir, "--out", Path.Combine(tmp.Path, "no", "such", "dir", "x.gguf"), "--type", "q4_0"],
            _ => throw new ArgumentException(scenario),
        };
        var (code, _, err) = CliRunner.Run(args);
        string line = CliRunner.AssertOneLineError(1, code, err);
        Assert.Contains(named, line);
        Assert.Contains(fragment, line);
        Assert.Contains(tmp.Path, line); // the file (or the missing directory) by its path
    }
}
