// The model verbs through the real CLI entry point: exact JSON layouts, agreement with the library,
// and one-line errors with the documented exit codes (2 usage, 1 failure).
using System.Text.Json;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Cli;

public class ModelCommandTests
{
    [SkippableFact]
    public void PerplexityPrintsTheDocumentedJsonAndMatchesTheReference()
    {
        var dir = SharedData.Require("tiny-random-llama");
        var expected = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "expected.json"))).RootElement.GetProperty("forward")[0];
        var (code, output, err) = CliRunner.Run("perplexity", "--model", dir, "--text", expected.GetProperty("text").GetString()!, "--json");
        Assert.True(code == 0, err);
        var line = output.Trim();
        Assert.Matches(@"^\{""tokens"": \d+, ""mean_nll"": [-0-9.eE+]+, ""perplexity"": [-0-9.eE+]+\}$", line);
        var json = JsonDocument.Parse(line).RootElement;
        Assert.Equal(expected.GetProperty("ids").GetArrayLength(), json.GetProperty("tokens").GetInt32());
        double refNll = expected.GetProperty("mean_nll").GetDouble();
        Assert.True(Math.Abs(json.GetProperty("mean_nll").GetDouble() - refNll) <= 1e-4 * refNll);
        Assert.Equal(Math.Exp(json.GetProperty("mean_nll").GetDouble()), json.GetProperty("perplexity").GetDouble(), 6);
    }

    [SkippableFact]
    public void GenerateJsonFromPromptIdsEqualsRunCGreedy()
    {
        var bin = SharedData.Require("stories260K/stories260K.bin");
        var greedy = JsonDocument.Parse(File.ReadAllText(SharedData.Require("stories260K/greedy.json"))).RootElement
            .GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).Take(16).ToArray();
        var (code, output, err) = CliRunner.Run("generate", "--model", bin, "--prompt-ids", "1", "--max-tokens", "16", "--json");
        Assert.True(code == 0, err);
        var json = JsonDocument.Parse(output.Trim()).RootElement;
        Assert.Equal(greedy, json.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray());
        Assert.True(json.GetProperty("tokens_per_second").GetDouble() > 0);
        Assert.StartsWith("{\"ids\": [", output);
    }

    [SkippableFact]
    public void GenerateWithTheSameSeedGivesTheSameText()
    {
        var dir = SharedData.Require("tiny-random-llama");
        string[] args = ["generate", "--model", dir, "--prompt", "Once upon a time", "--max-tokens", "12", "--temperature", "0.9", "--top-k", "50", "--top-p", "0.95", "--seed", "7", "--json"];
        var a = JsonDocument.Parse(CliRunner.Run(args).Out).RootElement;
        var b = JsonDocument.Parse(CliRunner.Run(args).Out).RootElement;
        Assert.Equal(a.GetProperty("ids").ToString(), b.GetProperty("ids").ToString());
        Assert.Equal(a.GetProperty("text").GetString(), b.GetProperty("text").GetString());
        args[^2] = "8";
        var c = JsonDocument.Parse(CliRunner.Run(args).Out).RootElement;
        Assert.NotEqual(a.GetProperty("ids").ToString(), c.GetProperty("ids").ToString());
        // Streaming (no --json) prints the same text as the JSON's "text".
        var streamed = CliRunner.Run(args[..^1]);
        Assert.Equal(0, streamed.Code);
        Assert.Equal(c.GetProperty("text").GetString(), streamed.Out.TrimEnd('\n'));
    }

    [Fact]
    public void InfoOnAPresetShowsParametersAndBytes()
    {
        var (code, output, _) = CliRunner.Run("info", "--preset", "tinyllama-1.1b");
        Assert.Equal(0, code);
        Assert.Contains("parameters: 1,100,048,384", output);
        Assert.Contains("\"num_key_value_heads\": 4", output);
    }

    [Theory]
    [InlineData("--prompt-tokens", "--tokens", "--repeats")]
    [InlineData("-p", "-n", "-r")] // llama-bench's names
    public void BenchGeneratePrintsTheDocumentedJson(string p, string n, string r)
    {
        var (code, output, err) = CliRunner.Run("bench", "generate", "--preset", "stories260K", p, "8", n, "4", r, "3", "--json");
        Assert.True(code == 0, err);
        Assert.Matches(@"^\{""prefill_tokens_per_second"": [0-9.]+, ""decode_tokens_per_second"": [0-9.]+, " +
            @"""prefill_tokens_per_second_sd"": [0-9.]+, ""decode_tokens_per_second_sd"": [0-9.]+, ""threads"": \d+, ""p"": 8, ""n"": 4, ""r"": 3\}$", output.Trim());
        var json = JsonDocument.Parse(output).RootElement;
        foreach (var key in new[] { "prefill_tokens_per_second", "decode_tokens_per_second" })
        {
            Assert.True(json.GetProperty(key).GetDouble() > 0, key);
            Assert.True(json.GetProperty(key + "_sd").GetDouble() >= 0, key + "_sd");
        }
        Assert.True(json.GetProperty("threads").GetInt32() >= 1);
    }

    [Fact]
    public void BenchGenerateWithOneRepetitionHasZeroDeviation()
    {
        var (code, output, err) = CliRunner.Run("bench", "generate", "--preset", "stories260K", "-p", "4", "-n", "2", "-r", "1", "--json");
        Assert.True(code == 0, err);
        var json = JsonDocument.Parse(output).RootElement;
        Assert.Equal(0, json.GetProperty("prefill_tokens_per_second_sd").GetDouble());
        Assert.Equal(0, json.GetProperty("decode_tokens_per_second_sd").GetDouble());
        Assert.Equal(1, json.GetProperty("r").GetInt32());
    }

    [Fact]
    public void BenchGeneratePrintsLlamaBenchTableRows()
    {
        var (code, output, err) = CliRunner.Run("bench", "generate", "--preset", "stories260K", "-p", "16", "-n", "8", "-r", "2");
        Assert.True(code == 0, err);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"^\| model +\| +size \| +params \| backend +\| threads \| +test \| +t/s \|$", lines[0]);
        Assert.Matches(@"^\| stories260K +\| +[0-9.]+ MiB \| +260\.03 K \| CPU +\| +\d+ \| +pp16 \| +[0-9.]+ ± [0-9.]+ \|$", lines[2]);
        Assert.Matches(@"^\| stories260K +\| +[0-9.]+ MiB \| +260\.03 K \| CPU +\| +\d+ \| +tg8 \| +[0-9.]+ ± [0-9.]+ \|$", lines[3]);
    }

    [Theory]
    [InlineData(new double[] { 7 }, 7, 0)]                                  // one run: deviation 0, as llama-bench
    [InlineData(new double[] { 1, 2, 3, 4 }, 2.5, 1.2909944487358056)]      // sqrt(5/3): divisor n - 1
    [InlineData(new double[] { 10, 10, 10 }, 10, 0)]
    [InlineData(new double[] { 2, 4, 4, 4, 5, 5, 7, 9 }, 5, 2.1380899352993952)] // sqrt(32/7)
    public void BenchGenerateMeanAndSampleDeviation(double[] values, double mean, double sd)
    {
        var s = TinyLlama.Cli.Commands.BenchGenerateCommand.MeanAndSd(values);
        Assert.Equal(mean, s.Mean, 12);
        Assert.Equal(sd, s.Sd, 12);
    }

    [Theory]
    [InlineData(2, "generate", "--model", "x", "--max-tokens", "3")]                       // neither --prompt nor --prompt-ids
    [InlineData(2, "generate", "--model", "x", "--prompt", "a", "--prompt-ids", "1", "--max-tokens", "3")]
    [InlineData(2, "generate", "--model", "x", "--prompt-ids", "1,a", "--max-tokens", "3")]
    [InlineData(2, "generate", "--model", "x", "--prompt-ids", "1", "--max-tokens", "3", "--top-p", "0")]
    [InlineData(2, "perplexity", "--model", "x", "--text", "a", "--bogus")]
    [InlineData(2, "info", "--preset", "nope")]
    [InlineData(2, "bench", "generate", "--preset", "stories260K", "-p", "100000")]        // longer than the context (512)
    [InlineData(2, "bench", "generate", "--preset", "stories260K", "-n", "100000")]
    [InlineData(2, "bench", "generate", "--preset", "stories260K", "-r", "0")]
    [InlineData(2, "bench", "generate", "--preset", "stories260K", "-p", "x")]
    [InlineData(2, "--threads", "0", "bench", "generate", "--preset", "stories260K")]
    [InlineData(2, "--threads", "-1", "bench", "generate", "--preset", "stories260K")]
    [InlineData(2, "--threads", "x", "bench", "generate", "--preset", "stories260K")]
    [InlineData(2, "--threads", "100000", "bench", "generate", "--preset", "stories260K")]
    [InlineData(2, "generate", "--model", "x", "--prompt", "a", "--max-tokens", "3", "--threads", "0")]
    [InlineData(2, "perplexity", "--model", "x", "--text", "a", "--threads", "many")]
    [InlineData(2, "demo", "--quick", "--threads", "100000")]
    [InlineData(2, "frobnicate")]
    [InlineData(2, "demo", "--quick", "--eval-every", "-1")]
    [InlineData(2, "demo", "--quick", "--eval-every", "often")]
    [InlineData(1, "perplexity", "--model", "/nonexistent/model", "--text", "a")]
    [InlineData(1, "info", "--model", "/nonexistent/model")]
    // quantize: flags are checked before any file is read (files: QuantizeCommandTests.BadFilesGiveOneLineNamingThem).
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "q5_0")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "q4_0", "--method", "gptq")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "q4_0", "--method", "gptq", "--calib", "c.ids", "--calib-samples", "0")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "q4_0", "--method", "gptq", "--calib", "c.ids", "--calib-length", "1")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "f16", "--method", "gptq", "--calib", "c.ids")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "q4_0", "--method", "awq")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "q4_0", "--calib", "c.ids")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "q4_0", "--act-order")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "q4_0", "--scale-search", "mse")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "q4_0", "--method", "gptq", "--calib", "c.ids", "--scale-search", "grid")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.bin", "--type", "q4_0")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "q4_0", "--keep", "bogus")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf", "--type", "q4_0", "--keep", "bf16")]
    [InlineData(2, "quantize", "--model", "x", "--out", "o.gguf")]                      // --type is required
    [InlineData(1, "quantize", "--model", "/nonexistent/model", "--out", "o.gguf", "--type", "q4_0")]
    [InlineData(2, "perplexity", "--model", "x", "--text", "a", "--ids-file", "a.ids")]
    [InlineData(1, "perplexity", "--model", "/nonexistent/model.gguf", "--text", "a")]
    public void BadInputGivesOneLineAndTheDocumentedExitCode(int expectedCode, params string[] args)
    {
        var (code, _, err) = CliRunner.Run(args);
        CliRunner.AssertOneLineError(expectedCode, code, err);
    }

    [Fact]
    public void CorruptCheckpointIsOneLineNamingTheFile()
    {
        var dir = Directory.CreateTempSubdirectory("tinyllama-bad-");
        try
        {
            File.WriteAllText(Path.Combine(dir.FullName, "config.json"), "{\"model_type\": \"llama\", \"vocab_size\": 10, \"hidden_size\": 8, \"intermediate_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2}");
            File.WriteAllBytes(Path.Combine(dir.FullName, "model.safetensors"), [1, 2, 3]);
            var (code, _, err) = CliRunner.Run("perplexity", "--model", dir.FullName, "--text", "a");
            Assert.Equal(1, code);
            Assert.Contains("model.safetensors", err);
            Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        }
        finally { dir.Delete(true); }
    }
}
