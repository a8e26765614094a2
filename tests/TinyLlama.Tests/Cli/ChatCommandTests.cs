// `tinyllama chat` driven over standard input, as scripts drive it: one answer line per input line and
// nothing else on stdout, the first raw-template answer equal to `generate`'s, /reset, the context-full
// notice on stderr, --adapter as generate sees an adapter directory, and one-line usage errors for bad flags. The model is tiny-random-llama (it has a
// tokenizer; stories260K has none); the library behaviour is tested in Generation/ChatSessionTests.
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Formats;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Tests.Training;
using TinyLlama.Training.Lora;

namespace TinyLlama.Tests.Cli;

public class ChatCommandTests
{
    private static string[] Lines(string output)
    {
        Assert.EndsWith("\n", output);
        return output[..^1].Split('\n');
    }

    [SkippableFact]
    public void StdinGetsExactlyOneAnswerLinePerInputLine()
    {
        var dir = SharedData.Require("tiny-random-llama");
        var (code, output, err) = CliRunner.RunWithInput("Hi\nHow are you?\n\nBye\n", "chat", "--model", dir, "--template", "vicuna", "--max-tokens", "6");
        Assert.True(code == 0, err);
        Assert.Equal("", err);
        var lines = Lines(output);
        Assert.Equal(4, lines.Length);
        Assert.DoesNotContain("> ", output.Split('\n').Select(l => l.Length >= 2 ? l[..2] : l)); // no prompt
    }

    [SkippableFact]
    public void TheFirstRawAnswerIsWhatGenerateWrites()
    {
        // raw: the first turn is BOS + encode(text), exactly generate's prompt.
        var dir = SharedData.Require("tiny-random-llama");
        var generated = CliRunner.Run("generate", "--model", dir, "--prompt", "Once upon a time", "--max-tokens", "10");
        Assert.Equal(0, generated.Code);
        var chat = CliRunner.RunWithInput("Once upon a time\n", "chat", "--model", dir, "--template", "raw", "--max-tokens", "10");
        Assert.True(chat.Code == 0, chat.Err);
        string expected = generated.Out[..^1].Replace('\r', ' ').Replace('\n', ' ');
        Assert.Equal([expected], Lines(chat.Out));
    }

    [SkippableFact]
    public void AnAdapterChangesTheAnswerAsGenerateOnTheAdapterDirectory()
    {
        var dir = SharedData.Require("tiny-random-llama");
        using var tmp = new TempDir();
        var ckpt = Checkpoint.Load(dir);
        var model = LlamaForCausalLM.FromWeights(ckpt.Config, ckpt.Weights);
        var config = LoraTests.AllTargets(rank: 2, alpha: 4);
        Lora.Apply(model, config, new Generator(2));
        LoraTests.RandomiseAdapters(model, seed: 5, std: 0.5);
        PeftAdapter.Save(tmp.Path, model, config, dir);

        string[] prompt = ["--prompt", "Once upon a time", "--max-tokens", "10", "--tokenizer", Path.Combine(dir, "tokenizer.model")];
        var adapted = CliRunner.Run(["generate", "--model", tmp.Path, .. prompt]);
        var plain = CliRunner.Run(["generate", "--model", dir, .. prompt]);
        Assert.True(adapted.Code == 0 && plain.Code == 0, adapted.Err + plain.Err);
        Assert.NotEqual(plain.Out, adapted.Out);
        var chat = CliRunner.RunWithInput("Once upon a time\n", "chat", "--model", dir, "--adapter", tmp.Path, "--template", "raw", "--max-tokens", "10");
        Assert.True(chat.Code == 0, chat.Err);
        Assert.Equal([adapted.Out[..^1].Replace('\r', ' ').Replace('\n', ' ')], Lines(chat.Out));
        // An adapter directory as --model already carries its adapter.
        var twice = CliRunner.RunWithInput("Hi\n", "chat", "--model", tmp.Path, "--adapter", tmp.Path);
        Assert.Equal(2, twice.Code);
        Assert.Contains("is an adapter directory already", twice.Err);
    }

    [SkippableFact]
    public void ResetStartsOverAndExitStops()
    {
        var dir = SharedData.Require("tiny-random-llama");
        var (code, output, err) = CliRunner.RunWithInput("Hi\n/reset\nHi\n/exit\nnever answered\n", "chat", "--model", dir, "--max-tokens", "6");
        Assert.True(code == 0, err);
        var lines = Lines(output);
        Assert.Equal(2, lines.Length);
        Assert.Equal(lines[0], lines[1]);
    }

    [SkippableFact]
    public void AFullContextDropsTheOldestTurnAndSaysSo()
    {
        var dir = SharedData.Require("tiny-random-llama");
        string input = string.Concat(Enumerable.Range(0, 6).Select(i => $"Tell me story number {i}.\n"));
        var (code, output, err) = CliRunner.RunWithInput(input, "chat", "--model", dir, "--template", "raw", "--ctx-size", "48", "--max-tokens", "8");
        Assert.True(code == 0, err);
        Assert.Equal(6, Lines(output).Length);
        Assert.Matches(@"^(\(context full: dropped the oldest (1 turn|\d+ turns)\)\n)+$", err);
    }

    [SkippableFact]
    public void AMessageLongerThanTheContextIsReportedAndTheChatGoesOn()
    {
        var dir = SharedData.Require("tiny-random-llama");
        string input = string.Join(" ", Enumerable.Repeat("word", 40)) + "\nHi\n";
        var (code, output, err) = CliRunner.RunWithInput(input, "chat", "--model", dir, "--template", "raw", "--ctx-size", "16", "--max-tokens", "4");
        Assert.Equal(1, code);
        var lines = Lines(output);
        Assert.Equal(2, lines.Length);
        Assert.Equal("", lines[0]);
        Assert.Matches(@"^tinyllama: the message needs \d+ tokens with the conversation start; the context holds 16\n$", err);
    }

    [Theory]
    [InlineData("--template", "llama3")]
    [InlineData("--max-tokens", "0")]
    [InlineData("--ctx-size", "-1")]
    [InlineData("--top-p", "0")]
    [InlineData("--temperature", "-1")]
    [InlineData("--bogus", "1")]
    public void BadFlagsAreOneLineUsageErrors(string flag, string value)
    {
        var (code, output, err) = CliRunner.RunWithInput("Hi\n", "chat", "--model", "no-such-model", flag, value);
        Assert.Equal(2, code);
        Assert.Equal("", output);
        Assert.StartsWith("tinyllama: ", err);
        Assert.Single(err.TrimEnd('\n').Split('\n'));
        Assert.Contains(flag.TrimStart('-'), err); // names the flag
    }

    [SkippableFact]
    public void BadPathsAndAnOversizedContextAreOneLineErrors()
    {
        var dir = SharedData.Require("tiny-random-llama");
        var tooBig = CliRunner.RunWithInput("Hi\n", "chat", "--model", dir, "--ctx-size", "513");
        Assert.Equal(2, tooBig.Code);
        Assert.Equal("tinyllama: --ctx-size: 513 exceeds the model's max_position_embeddings 512\n", tooBig.Err);
        var noAdapter = CliRunner.RunWithInput("Hi\n", "chat", "--model", dir, "--adapter", dir);
        Assert.Equal(1, noAdapter.Code);
        Assert.Contains("--adapter: ", noAdapter.Err);
        Assert.Contains("adapter_config.json", noAdapter.Err);
        var noModel = CliRunner.RunWithInput("Hi\n", "chat", "--model", Path.Combine(dir, "missing"));
        Assert.Equal(1, noModel.Code);
        Assert.Single(noModel.Err.TrimEnd('\n').Split('\n'));
    }
}
