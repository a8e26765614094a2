// The sft verb end to end: documented JSON lines, the PyTorch reference losses through the CLI,
// LoRA output loadable by the other verbs, resume through --resume, and usage errors.
using System.Text.Json;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Cli;

public class SftCommandTests
{
    private static string[] BaseArgs(string dir, string outDir, params string[] extra) =>
        ["sft", "--model", dir, "--data", Path.Combine(dir, "sft_sample.json"), "--format", "alpaca", "--out", outDir, "--batch-size", "1", "--lr", "1e-2", "--no-shuffle", "--json", .. extra];

    [SkippableFact]
    public void FullFineTuneJsonLinesMatchTheReferenceAndOutputLoads()
    {
        var dir = SharedData.Require("tiny-random-llama");
        var expected = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "expected.json"))).RootElement.GetProperty("sft").GetProperty("losses")
            .EnumerateArray().Select(e => e.GetDouble()).ToArray();
        var outDir = Directory.CreateTempSubdirectory("tinyllama-sft-").FullName;
        try
        {
            var (code, output, err) = CliRunner.Run(BaseArgs(dir, outDir, "--steps", "3"));
            Assert.True(code == 0, err);
            var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(3, lines.Length);
            for (int i = 0; i < 3; i++)
            {
                Assert.Matches(@"^\{""step"": \d+, ""loss"": [-0-9.eE+]+, ""lr"": [-0-9.eE+]+, ""tokens_per_second"": [0-9.]+\}$", lines[i]);
                var json = JsonDocument.Parse(lines[i]).RootElement;
                Assert.Equal(i + 1, json.GetProperty("step").GetInt32());
                Assert.True(Math.Abs(json.GetProperty("loss").GetDouble() - expected[i]) <= 1e-4 * expected[i]);
            }
            foreach (var f in new[] { "config.json", "model.safetensors", "tokenizer.model", "loss.png", "checkpoint/trainer_state.json" })
                Assert.True(File.Exists(Path.Combine(outDir, f)), f);
            var ppl = CliRunner.Run("perplexity", "--model", outDir, "--text", "Blue.", "--json");
            Assert.True(ppl.Code == 0, ppl.Err);
        }
        finally { Directory.Delete(outDir, true); }
    }

    [SkippableFact]
    public void LoraRunWritesAPeftAdapterAndResumeContinuesExactly()
    {
        var dir = SharedData.Require("tiny-random-llama");
        var straightDir = Directory.CreateTempSubdirectory("tinyllama-lora-").FullName;
        var resumedDir = Directory.CreateTempSubdirectory("tinyllama-lora-").FullName;
        try
        {
            string[] lora = ["--lora-rank", "4", "--lora-targets", "q,v", "--lora-dropout", "0.1", "--seed", "3"];
            var straight = CliRunner.Run(BaseArgs(dir, straightDir, ["--steps", "4", .. lora]));
            Assert.True(straight.Code == 0, straight.Err);
            Assert.True(File.Exists(Path.Combine(straightDir, "adapter_config.json")));
            Assert.True(File.Exists(Path.Combine(straightDir, "adapter_model.safetensors")));
            Assert.False(File.Exists(Path.Combine(straightDir, "model.safetensors")));
            var first = CliRunner.Run(BaseArgs(dir, resumedDir, ["--steps", "2", .. lora]));
            Assert.True(first.Code == 0, first.Err);
            var second = CliRunner.Run(BaseArgs(dir, resumedDir, ["--steps", "4", "--resume", resumedDir, .. lora]));
            Assert.True(second.Code == 0, second.Err);
            double[] Losses(string o) => o.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("loss").GetDouble()).ToArray();
            Assert.Equal(Losses(straight.Out), Losses(first.Out).Concat(Losses(second.Out)).ToArray());
            var gen = CliRunner.Run("generate", "--model", straightDir, "--prompt", "Name a primary color.", "--max-tokens", "3", "--json");
            Assert.True(gen.Code == 0, gen.Err);
        }
        finally
        {
            Directory.Delete(straightDir, true);
            Directory.Delete(resumedDir, true);
        }
    }

    [Theory]
    [InlineData("--format", "csv")]
    [InlineData("--dtype", "int8")]
    [InlineData("--schedule", "linear")]
    [InlineData("--batch-size", "0")]
    [InlineData("--val-fraction", "1.5")]
    public void BadFlagsAreUsageErrors(string flag, string value)
    {
        string[] args = ["sft", "--model", "m", "--data", "d", "--format", "alpaca", "--out", "o", "--steps", "1", "--batch-size", "1", "--lr", "1e-3"];
        int i = Array.IndexOf(args, flag);
        args = i >= 0 ? args.Select((a, j) => j == i + 1 ? value : a).ToArray() : [.. args, flag, value];
        var (code, _, err) = CliRunner.Run(args);
        Assert.Equal(2, code);
        Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [SkippableFact]
    public void MalformedDataNamesFileAndLine()
    {
        var tmp = Directory.CreateTempSubdirectory("tinyllama-data-").FullName;
        try
        {
            var data = Path.Combine(tmp, "data.jsonl");
            File.WriteAllText(data, "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\"}\n");
            var dir = SharedData.ReferenceDir is null ? null : Path.Combine(SharedData.ReferenceDir, "tiny-random-llama");
            Skip.If(dir is null, "reference model absent");
            var (code, _, err) = CliRunner.Run("sft", "--model", dir!, "--data", data, "--format", "alpaca", "--out", Path.Combine(tmp, "out"), "--steps", "1", "--batch-size", "1", "--lr", "1e-3");
            Assert.Equal(1, code);
            Assert.Contains("data.jsonl:2", err);
            Assert.Contains("output", err);
        }
        finally { Directory.Delete(tmp, true); }
    }
}

public class SftMixtureTests
{
    [SkippableFact]
    public void RepeatedDataFlagsTrainOnAWeightedMixture()
    {
        var dir = SharedData.Require("tiny-random-llama");
        var tmp = Directory.CreateTempSubdirectory("tinyllama-mix-").FullName;
        try
        {
            var extra = Path.Combine(tmp, "extra.jsonl");
            File.WriteAllText(extra, "{\"instruction\": \"Say hi.\", \"output\": \"Hi.\"}\n{\"instruction\": \"Say bye.\", \"output\": \"Bye.\"}\n");
            var (code, output, err) = CliRunner.Run("sft", "--model", dir, "--data", Path.Combine(dir, "sft_sample.json") + ":3", "--data", extra + ":1",
                "--format", "alpaca", "--out", Path.Combine(tmp, "out"), "--steps", "1", "--batch-size", "2", "--lr", "1e-3");
            Assert.True(code == 0, err);
            // 2 + 2 records mixed 3:1 -> 3 from the first file, 1 from the second (largest remainder).
            Assert.Contains("4 train / 0 validation examples", output);
            var bad = CliRunner.Run("sft", "--model", dir, "--data", extra + ":0", "--format", "alpaca", "--out", Path.Combine(tmp, "o2"), "--steps", "1", "--batch-size", "1", "--lr", "1e-3");
            Assert.Equal(2, bad.Code);
            Assert.Contains("weight", bad.Err);
        }
        finally { Directory.Delete(tmp, true); }
    }
}
