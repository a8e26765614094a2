// The reward and dpo verbs end to end on a tiny model with a BPE tokenizer: documented JSON lines,
// reward train -> reward score (accuracy printed, the held-out evaluation), dpo with LoRA writing an
// adapter that other verbs load, --resume repeating the uninterrupted losses, and usage errors that name
// the flag or the data file's line.
using System.Text.Json;
using System.Text.Json.Nodes;
using TinyLlama.Tests.Cli;
using TinyLlama.Tests.Formats;

namespace TinyLlama.Tests.Preferences;

public class PreferenceCommandTests
{
    private static (string Model, string Pairs) Setup(TempDir dir)
    {
        var (model, _) = SftReliabilityTests.WriteModelAndData(dir);
        string pairs = dir.File("pairs.jsonl");
        (string P, string C, string R)[] rows =
        [
            ("Name a color.", " Blue is a color.", " One two three."),
            ("Count to three.", " One two three.", " Hi there."),
            ("Say hi.", " Hi there.", " Blue is a color."),
            ("Name a color.", " Blue.", " Three."),
        ];
        File.WriteAllLines(pairs, rows.Select(r => new JsonObject { ["prompt"] = r.P, ["chosen"] = r.C, ["rejected"] = r.R }.ToJsonString()));
        return (model, pairs);
    }

    private static JsonElement[] Lines(string output) =>
        output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToArray();

    [Fact]
    public void RewardTrainThenScore()
    {
        using var dir = new TempDir();
        var (model, pairs) = Setup(dir);
        string outDir = dir.File("rm");
        var train = CliRunner.Run("reward", "train", "--model", model, "--data", pairs, "--out", outDir, "--steps", "3", "--lr", "1e-2",
            "--lora-rank", "2", "--val-fraction", "0.25", "--json");
        Assert.True(train.Code == 0, train.Err);
        var lines = Lines(train.Out);
        Assert.Equal(4, lines.Length);
        Assert.Matches(@"^\{""step"": 1, ""loss"": [-0-9.eE+]+, ""rewards/chosen"": .*, ""rewards/rejected"": .*, ""rewards/margins"": .*, ""accuracy"": .*, ""lr"": .*, ""tokens_per_second"": [0-9.]+\}", train.Out.Split('\n')[0]);
        Assert.Equal(1, lines[3].GetProperty("pairs").GetInt32());
        foreach (var f in new[] { "config.json", "model.safetensors", "score.safetensors", "reward_model.json", "tokenizer.json", "checkpoint/trainer_state.json" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);

        var score = CliRunner.Run("reward", "score", "--model", outDir, "--data", pairs, "--json");
        Assert.True(score.Code == 0, score.Err);
        var scored = Lines(score.Out);
        Assert.Equal(5, scored.Length);
        int correct = 0;
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal($"{pairs}:{i + 1}", scored[i].GetProperty("source").GetString());
            double margin = scored[i].GetProperty("margin").GetDouble();
            Assert.Equal(scored[i].GetProperty("chosen").GetDouble() - scored[i].GetProperty("rejected").GetDouble(), margin, 12);
            if (margin > 0) correct++;
        }
        Assert.Equal(correct / 4.0, scored[4].GetProperty("accuracy").GetDouble());

        var notReward = CliRunner.Run("reward", "score", "--model", model, "--data", pairs);
        Assert.Contains("not a reward model directory", CliRunner.AssertOneLineError(1, notReward.Code, notReward.Err));

        // The trained model as `judge`'s judge: each question's verdict follows the rewards `reward score` gives,
        // whichever answer comes first (a score judge cannot be inconsistent). The pairs' prompts are the questions.
        var rows = File.ReadAllLines(pairs).Select(l => JsonDocument.Parse(l).RootElement).ToArray();
        string q = dir.File("q.jsonl"), a = dir.File("a.jsonl"), b = dir.File("b.jsonl");
        File.WriteAllLines(q, rows.Select((r, i) => new JsonObject { ["id"] = i, ["question"] = r.GetProperty("prompt").GetString() }.ToJsonString()));
        File.WriteAllLines(a, rows.Select((r, i) => new JsonObject { ["id"] = i, ["answer"] = r.GetProperty("chosen").GetString() }.ToJsonString()));
        File.WriteAllLines(b, rows.Select((r, i) => new JsonObject { ["id"] = i, ["answer"] = r.GetProperty("rejected").GetString() }.ToJsonString()));
        var judged = CliRunner.Run("judge", "--questions", q, "--answers-a", a, "--answers-b", b, "--judge", outDir, "--json");
        Assert.True(judged.Code == 0, judged.Err);
        var verdicts = JsonDocument.Parse(judged.Out).RootElement.GetProperty("verdicts");
        Assert.Equal(4, verdicts.GetArrayLength());
        for (int i = 0; i < 4; i++)
        {
            double margin = scored[i].GetProperty("margin").GetDouble();
            string expected = margin > 0 ? "A" : margin < 0 ? "B" : "tie";
            Assert.Equal(expected, verdicts[i].GetProperty("verdict").GetString(), ignoreCase: true);
        }
    }

    [Fact]
    public void DpoWithLoraWritesAnAdapterAndResumesExactly()
    {
        using var dir = new TempDir();
        var (model, pairs) = Setup(dir);
        string[] Args(string outDir, int steps, params string[] extra) =>
            ["dpo", "--model", model, "--data", pairs, "--out", outDir, "--steps", steps.ToString(), "--lr", "1e-2", "--lora-rank", "2", "--beta", "0.5", "--seed", "4", "--json", .. extra];
        var straight = CliRunner.Run(Args(dir.File("a"), 4));
        Assert.True(straight.Code == 0, straight.Err);
        var lines = Lines(straight.Out);
        Assert.Equal(4, lines.Length);
        Assert.Equal(0.0, lines[0].GetProperty("rewards/margins").GetDouble(), 6); // the policy starts as its reference
        foreach (var key in new[] { "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "lr", "tokens_per_second" })
            Assert.True(lines[3].TryGetProperty(key, out _), key);
        Assert.True(File.Exists(Path.Combine(dir.File("a"), "adapter_config.json")));

        var first = CliRunner.Run(Args(dir.File("b"), 2));
        Assert.True(first.Code == 0, first.Err);
        var second = CliRunner.Run(Args(dir.File("b"), 4, "--resume", dir.File("b")));
        Assert.True(second.Code == 0, second.Err);
        Assert.Equal(lines.Select(l => l.GetProperty("loss").GetDouble()), Lines(first.Out).Concat(Lines(second.Out)).Select(l => l.GetProperty("loss").GetDouble()));

        var gen = CliRunner.Run("generate", "--model", dir.File("a"), "--prompt", "Say hi.", "--max-tokens", "2", "--json");
        Assert.True(gen.Code == 0, gen.Err);
    }

    [Theory]
    [InlineData("--beta", "0", "--beta")]
    [InlineData("--loss", "kto", "--loss")]
    [InlineData("--label-smoothing", "0.7", "--label-smoothing")]
    [InlineData("--batch-size", "0", "--batch-size")]
    [InlineData("--lr", "NaN", "--lr")]
    [InlineData("--dtype", "int8", "--dtype")]
    public void DpoBadFlagsAreUsageErrors(string flag, string value, string named)
    {
        using var dir = new TempDir();
        var (model, pairs) = Setup(dir);
        string[] args = ["dpo", "--model", model, "--data", pairs, "--out", dir.File("o"), "--steps", "1", .. flag == "--lr" ? Array.Empty<string>() : ["--lr", "1e-3"], flag, value];
        var r = CliRunner.Run(args);
        Assert.Contains(named, CliRunner.AssertOneLineError(2, r.Code, r.Err));
    }

    [Fact]
    public void BadPairFileNamesTheLine()
    {
        using var dir = new TempDir();
        var (model, pairs) = Setup(dir);
        File.AppendAllText(pairs, "{\"prompt\": \"Q\", \"chosen\": \"c\"}\n");
        var r = CliRunner.Run("dpo", "--model", model, "--data", pairs, "--out", dir.File("o"), "--steps", "1", "--lr", "1e-3");
        Assert.Contains("pairs.jsonl:5: field \"rejected\" is missing", CliRunner.AssertOneLineError(1, r.Code, r.Err));
    }
}
