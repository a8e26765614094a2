// Issue 13 through the CLI, on a small model made here (no reference data needed): every numeric sft
// flag outside its range is a usage error naming it; a run that diverges stops with one line naming the
// step and the value and the last good checkpoint resumes; --resume recovers a checkpoint caught between
// its two renames; adapters whose base_model_name_or_path loops (one or two adapters) or stacks too deep
// are refused with one line naming the chain, and a valid two-adapter chain computes W + s1 B1 A1 + s2 B2 A2.
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Formats;
using TinyLlama.Training.Demo;
using TinyLlama.Training.Lora;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Tests.Cli;

public class SftReliabilityTests
{
    /// <summary>An HF model directory (random tiny LLaMA, BPE tokenizer.json) and an Alpaca JSONL file of <paramref name="records"/> records.</summary>
    internal static (string Model, string Data) WriteModelAndData(TempDir dir, int records = 6)
    {
        string[] texts = ["Name a color.", "Blue is a color.", "Count to three.", "One two three.", "Say hi.", "Hi there."];
        var vocab = BpeTrainer.Train(texts, 20);
        string model = dir.File("model");
        Directory.CreateDirectory(model);
        vocab.SaveHuggingFaceJson(Path.Combine(model, "tokenizer.json"));
        var config = Tests.Model.LlamaTests.Tiny(vocab: vocab.ToTokenizer().VocabSize, maxPos: 512); // the Alpaca prompt is ~200 pieces
        var weights = new LlamaForCausalLM(config, new Generator(3)).StateDict().ToDictionary(kv => kv.Key, kv => kv.Value.Detach());
        Safetensors.Save(Path.Combine(model, Checkpoint.SafetensorsName), weights);
        File.WriteAllText(Path.Combine(model, Checkpoint.ConfigName), config.ToJson());
        string data = dir.File("data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, records).Select(i =>
            new JsonObject { ["instruction"] = texts[2 * (i % 3)], ["output"] = texts[2 * (i % 3) + 1] }.ToJsonString()));
        return (model, data);
    }

    private static string[] Sft(string model, string data, string outDir, params string[] extra) =>
        ["sft", "--model", model, "--data", data, "--format", "alpaca", "--out", outDir, "--no-shuffle", "--json", .. extra];

    [Theory]
    [InlineData("--lr", "0")]
    [InlineData("--lr", "-1e-3")]
    [InlineData("--lr", "NaN")]
    [InlineData("--lr", "Infinity")]
    [InlineData("--steps", "-1")]
    [InlineData("--epochs", "0")]
    [InlineData("--epochs", "NaN")]
    [InlineData("--epochs", "Infinity")]
    [InlineData("--batch-size", "0")]
    [InlineData("--batch-size", "2000000")]
    [InlineData("--grad-accum", "0")]
    [InlineData("--grad-accum", "2000000")]
    [InlineData("--warmup", "-1")]
    [InlineData("--weight-decay", "-0.1")]
    [InlineData("--weight-decay", "NaN")]
    [InlineData("--grad-clip", "NaN")]
    [InlineData("--grad-clip", "-1")]
    [InlineData("--val-fraction", "NaN")]
    [InlineData("--val-fraction", "1")]
    [InlineData("--val-fraction", "-0.5")]
    [InlineData("--max-length", "1")]
    [InlineData("--max-length", "-5")]
    [InlineData("--lora-rank", "-1")]
    [InlineData("--lora-rank", "100000")]
    [InlineData("--lora-alpha", "0")]
    [InlineData("--lora-alpha", "NaN")]
    [InlineData("--lora-dropout", "1")]
    [InlineData("--lora-dropout", "NaN")]
    [InlineData("--distill-temperature", "0")]
    [InlineData("--distill-weight", "1.5")]
    [InlineData("--eval-every", "-1")]
    [InlineData("--save-every", "-1")]
    public void NumericFlagOutOfRangeIsAUsageErrorNamingIt(string flag, string value)
    {
        // Checked before any file is read: the model and data paths need not exist.
        string[] args = ["sft", "--model", "m", "--data", "d", "--format", "alpaca", "--out", "o", "--batch-size", "1", "--lr", "1e-3"];
        if (flag != "--epochs") args = [.. args, "--steps", "1"];
        int i = Array.IndexOf(args, flag);
        args = i >= 0 ? args.Select((a, j) => j == i + 1 ? value : a).ToArray() : [.. args, flag, value];
        var (code, _, err) = CliRunner.Run(args);
        var line = CliRunner.AssertOneLineError(2, code, err);
        Assert.Contains(flag, line);
    }

    [Fact]
    public void StepsThatCannotFitInMemoryOrCountAreUsageErrors()
    {
        using var dir = new TempDir();
        var (model, data) = WriteModelAndData(dir, records: 2200);
        var memory = CliRunner.Run(Sft(model, data, dir.File("o1"), "--lr", "1e-3", "--steps", "1", "--batch-size", "1000000", "--grad-accum", "1000000"));
        Assert.Contains("GB or more", CliRunner.AssertOneLineError(2, memory.Code, memory.Err));
        var epochs = CliRunner.Run(Sft(model, data, dir.File("o2"), "--lr", "1e-3", "--epochs", "1000000", "--batch-size", "1"));
        Assert.Contains("--epochs", CliRunner.AssertOneLineError(2, epochs.Code, epochs.Err));
        Assert.False(File.Exists(Path.Combine(dir.File("o2"), "model.safetensors")));
    }

    [Fact]
    public void DivergingRunStopsNamingTheStepAndItsLastCheckpointResumes()
    {
        using var dir = new TempDir();
        var (model, data) = WriteModelAndData(dir);
        string outDir = dir.File("out");
        var (code, output, err) = CliRunner.Run(Sft(model, data, outDir, "--lr", "1e30", "--steps", "6", "--save-every", "1", "--batch-size", "2"));
        var line = CliRunner.AssertOneLineError(1, code, err);
        var match = Regex.Match(line, @"training diverged in step (\d+): the (loss|gradient norm) is (NaN|-?Infinity)");
        Assert.True(match.Success, line);
        int step = int.Parse(match.Groups[1].Value);
        Assert.True(step >= 2, line); // step 1 starts from the finite initial weights
        Assert.Contains("the last good checkpoint is " + Path.Combine(outDir, "checkpoint"), line);
        Assert.Equal(step - 1, output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length); // one JSON line per good step
        Assert.False(File.Exists(Path.Combine(outDir, "model.safetensors")));
        Assert.Empty(CheckpointDirectory.Leftovers(Path.Combine(outDir, "checkpoint")));
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "checkpoint", "trainer_state.json")))!;
        Assert.Equal(step - 1, (int)state["step"]!);

        // The checkpoint loads and holds the exact state: resuming the same run diverges in the same step
        // with the same value (lr 1e30 made the step-1 weights huge but finite; step 2's forward overflows).
        var again = CliRunner.Run(Sft(model, data, dir.File("again"), "--lr", "1e30", "--steps", "6", "--save-every", "1", "--batch-size", "2", "--resume", outDir));
        Assert.Equal(line, CliRunner.AssertOneLineError(1, again.Code, again.Err));
        var loaded = CliRunner.Run(Sft(model, data, outDir, "--lr", "1e-3", "--steps", $"{step - 1}", "--resume", outDir, "--batch-size", "2"));
        Assert.True(loaded.Code == 0, loaded.Err);
        Assert.True(File.Exists(Path.Combine(outDir, "model.safetensors")));
    }

    [Fact]
    public void ResumeRecoversACheckpointCaughtBetweenItsTwoRenames()
    {
        using var dir = new TempDir();
        var (model, data) = WriteModelAndData(dir);
        string straightDir = dir.File("straight"), outDir = dir.File("out");
        var straight = CliRunner.Run(Sft(model, data, straightDir, "--lr", "1e-3", "--steps", "4", "--batch-size", "2"));
        Assert.True(straight.Code == 0, straight.Err);
        var first = CliRunner.Run(Sft(model, data, outDir, "--lr", "1e-3", "--steps", "2", "--batch-size", "2"));
        Assert.True(first.Code == 0, first.Err);
        // Killed after "checkpoint -> .checkpoint.old-N", before ".checkpoint.tmp-N -> checkpoint"; plus a half-written temporary.
        Directory.Move(Path.Combine(outDir, "checkpoint"), Path.Combine(outDir, ".checkpoint.old-31337"));
        Directory.CreateDirectory(Path.Combine(outDir, ".checkpoint.tmp-31338"));
        var second = CliRunner.Run(Sft(model, data, outDir, "--lr", "1e-3", "--steps", "4", "--resume", outDir, "--batch-size", "2"));
        Assert.True(second.Code == 0, second.Err);
        static double[] Losses(string o) => o.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => (double)JsonNode.Parse(l)!["loss"]!).ToArray();
        Assert.Equal(Losses(straight.Out).Skip(2), Losses(second.Out)); // bit for bit, from the backup copy
        Assert.Empty(CheckpointDirectory.Leftovers(Path.Combine(outDir, "checkpoint")));
    }

    // ---------------- adapter chains ----------------

    private static string Adapter(TempDir dir, string name, string basePath)
    {
        string path = dir.File(name);
        Directory.CreateDirectory(path);
        var config = new JsonObject
        {
            ["peft_type"] = "LORA", ["r"] = 2, ["lora_alpha"] = 4, ["target_modules"] = new JsonArray("q_proj"),
            ["base_model_name_or_path"] = basePath,
        };
        File.WriteAllText(Path.Combine(path, PeftAdapter.ConfigFileName), config.ToJsonString());
        return path;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void AdapterCycleIsOneLineNamingTheChain(int length)
    {
        using var dir = new TempDir();
        string a = dir.File("a"), b = dir.File("b");
        if (length == 1) Adapter(dir, "a", a);
        else { Adapter(dir, "a", b); Adapter(dir, "b", a); }
        var (code, _, err) = CliRunner.Run("generate", "--model", a, "--prompt-ids", "1", "--max-tokens", "1");
        var line = CliRunner.AssertOneLineError(1, code, err);
        Assert.Contains(length == 1 ? $"{a} -> {a}" : $"{a} -> {b} -> {a}", line);
        Assert.Contains("leads back", line);
    }

    [Fact]
    public void AdapterCycleThroughASymbolicLinkIsFound()
    {
        using var dir = new TempDir();
        string a = dir.File("a"), link = dir.File("link");
        Adapter(dir, "a", link);
        Directory.CreateSymbolicLink(link, a);
        var e = Assert.Throws<InvalidDataException>(() => PeftAdapter.ResolveChain(a));
        Assert.Contains($"{a} -> {link}", e.Message);
    }

    [Fact]
    public void AdapterChainLongerThanTheBoundIsRefused()
    {
        using var dir = new TempDir();
        for (int i = 0; i <= PeftAdapter.MaxChainLength; i++) Adapter(dir, $"a{i}", dir.File($"a{i + 1}"));
        Adapter(dir, $"a{PeftAdapter.MaxChainLength + 1}", dir.File("model"));
        var e = Assert.Throws<InvalidDataException>(() => PeftAdapter.ResolveChain(dir.File("a0")));
        Assert.Contains($"more than {PeftAdapter.MaxChainLength} adapters", e.Message);
        // One fewer adapter is a valid chain that ends at the base model.
        var (chain, basePath) = PeftAdapter.ResolveChain(dir.File("a2"));
        Assert.Equal(PeftAdapter.MaxChainLength, chain.Count);
        Assert.Equal(dir.File("model"), basePath);
    }

    [Fact]
    public void LoraOverAnAdapterDirectoryIsAUsageError()
    {
        // sft --model ADAPTER --lora-rank R would stack a second adapter on the first one's layers.
        using var dir = new TempDir();
        var (model, data) = WriteModelAndData(dir);
        var lm = TinyLlama.Cli.Commands.ModelCommands.LoadModel(model, new TinyLlama.Cli.Commands.ModelFiles());
        var lora = new LoraConfig(2, 4, 0, ["q_proj"]);
        Lora.Apply(lm, lora, new Generator(1));
        string adapter = dir.File("adapter");
        PeftAdapter.Save(adapter, lm, lora, model);
        var (code, _, err) = CliRunner.Run(Sft(adapter, data, dir.File("out"), "--steps", "1", "--batch-size", "2", "--lr", "1e-3", "--lora-rank", "2"));
        var line = CliRunner.AssertOneLineError(2, code, err);
        Assert.Contains($"--model: {adapter} is a LoRA adapter", line);
    }

    [Fact]
    public void TwoAdapterChainAddsBothDeltas()
    {
        using var dir = new TempDir();
        var (model, _) = WriteModelAndData(dir);
        var lora = new LoraConfig(2, 4, 0, ["q_proj"]);
        string SaveAdapter(string name, string basePath, int seed)
        {
            var lm = TinyLlama.Cli.Commands.ModelCommands.LoadModel(model, new TinyLlama.Cli.Commands.ModelFiles());
            var gen = new Generator((ulong)seed);
            using (TinyLlama.Autograd.GradMode.NoGrad())
                foreach (var (_, layer) in Lora.Apply(lm, lora, gen))
                    layer.LoraB.Weight.CopyFrom_(Tensor.RandN(layer.LoraB.Weight.Shape, gen) * 0.5);
            string path = dir.File(name);
            PeftAdapter.Save(path, lm, lora, basePath);
            return path;
        }
        string first = SaveAdapter("first", model, 5), second = SaveAdapter("second", first, 6);

        // Reference: W + s (B1 A1 + B2 A2) added to every q_proj weight in f64.
        var ckpt = Checkpoint.Load(model);
        var weights = ckpt.Weights.ToDictionary(kv => kv.Key, kv => kv.Value);
        var files = new[] { first, second }.Select(d => SafetensorsFile.Open(Path.Combine(d, PeftAdapter.WeightsFileName))).ToList();
        foreach (var name in weights.Keys.Where(k => k.EndsWith("q_proj.weight", StringComparison.Ordinal)).ToList())
        {
            var w = weights[name].ToArray<double>();
            int rows = weights[name].Size(0), cols = weights[name].Size(1);
            foreach (var f in files)
            {
                string key = PeftAdapter.KeyPrefix + name[..^".weight".Length];
                var a = f.Get(key + ".lora_A.weight").ToArray<double>();
                var b = f.Get(key + ".lora_B.weight").ToArray<double>();
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < cols; j++)
                        for (int r = 0; r < lora.Rank; r++)
                            w[i * cols + j] += lora.Alpha / lora.Rank * b[i * lora.Rank + r] * a[r * cols + j];
            }
            weights[name] = Tensor.FromDoubles(w, [rows, cols]);
        }
        int[] ids = [1, 5, 9, 2, 7, 3];
        var input = Tensor.FromArray(ids, [1, ids.Length]);
        var expected = LlamaForCausalLM.FromWeights(ckpt.Config, weights).Forward(input).ToArray<float>();
        var actual = TinyLlama.Cli.Commands.ModelCommands.LoadModel(second, new TinyLlama.Cli.Commands.ModelFiles()).Forward(input).ToArray<float>();
        var onlySecond = TinyLlama.Cli.Commands.ModelCommands.LoadModel(model, new TinyLlama.Cli.Commands.ModelFiles(), adapterDir: second).Forward(input).ToArray<float>();
        double maxDiff = expected.Zip(actual, (x, y) => Math.Abs(x - y)).Max();
        Assert.True(maxDiff <= 1e-4, $"chain vs reference: max |diff| {maxDiff}");
        // Not vacuous: the lower adapter changes the logits.
        Assert.True(expected.Zip(onlySecond, (x, y) => Math.Abs(x - y)).Max() > 1e-3);
        var (code, _, err) = CliRunner.Run("generate", "--model", second, "--prompt-ids", "1,5", "--max-tokens", "2", "--json");
        Assert.True(code == 0, err);
    }

    [Fact]
    public void CheckTensorsNamesANaNWeightOfTheModelOrTheTeacher()
    {
        using var dir = new TempDir();
        var (model, data) = WriteModelAndData(dir);
        string poisoned = dir.File("poisoned");
        Directory.CreateDirectory(poisoned);
        foreach (var f in Directory.GetFiles(model)) File.Copy(f, Path.Combine(poisoned, Path.GetFileName(f)));
        string weightsFile = Path.Combine(poisoned, Checkpoint.SafetensorsName);
        var weights = SafetensorsFile.Open(weightsFile).Names.ToDictionary(n => n, n => SafetensorsFile.Open(weightsFile).Get(n).Clone());
        string bad = LlamaWeightNames.VProj(1);
        var values = weights[bad].ToArray<float>();
        values[3] = float.NaN;
        weights[bad] = Tensor.FromArray(values, weights[bad].Shape);
        Safetensors.Save(weightsFile, weights);

        foreach (var (args, flag) in new[]
        {
            (Sft(poisoned, data, dir.File("o1"), "--lr", "1e-3", "--steps", "1", "--batch-size", "2"), "--model"),
            (Sft(model, data, dir.File("o2"), "--lr", "1e-3", "--steps", "1", "--batch-size", "2", "--teacher", poisoned), "--teacher"),
        })
        {
            var (code, _, err) = CliRunner.Run([.. args, "--check-tensors"]);
            string line = CliRunner.AssertOneLineError(1, code, err);
            Assert.Contains($"'{bad}'", line);
            Assert.Contains("NaN or infinite", line);
            Assert.False(Directory.Exists(Path.Combine(dir.File(flag == "--model" ? "o1" : "o2"), "checkpoint")));
        }
        // Not vacuous: the clean model passes the same scan and trains.
        var clean = CliRunner.Run(Sft(model, data, dir.File("o3"), "--lr", "1e-3", "--steps", "1", "--batch-size", "2", "--check-tensors"));
        Assert.True(clean.Code == 0, clean.Err);
    }
}
