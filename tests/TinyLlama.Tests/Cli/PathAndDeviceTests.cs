// Issue 13's "Paths" and "Devices" classes through the CLI: wherever a verb expects a file, a FIFO is refused
// before it is opened (opening one blocks until something writes to it), a directory is called a directory,
// and the error names the flag that gave the path (--teacher, not --model); a malformed --device is a usage
// error on every verb, including those that compute nothing. Each case runs with a time limit, and a FIFO
// left waiting is released (opened for writing) so a regression fails instead of hanging the suite.
using System.Diagnostics;

namespace TinyLlama.Tests.Cli;

public class PathAndDeviceTests
{
    // Verb arguments with {path} where the bad path goes, the flag the error must name, and the outcome.
    public static TheoryData<string, string> FileFlags() => new()
    {
        { "perplexity --model {model} --file {path}", "--file" },
        { "perplexity --model {model} --ids-file {path}", "--ids-file" },
        { "quantize --model {model} --out {out}.gguf --type q8_0 --method gptq --calib {path}", "--calib" },
        { "tokenize --tokenizer {model} --jsonl {path}", "--jsonl" },
        { "sft --model {model} --data {path} --format alpaca --out {out} --steps 1 --batch-size 2 --lr 1e-3", "--data" },
        { "generate --model {path} --prompt-ids 1 --max-tokens 1", "--model" },
        { "info --model {path}", "--model" },
        { "sft --model {model} --teacher {path} --data {data} --format alpaca --out {out} --steps 1 --batch-size 2 --lr 1e-3", "--teacher" },
    };

    private static string[] Args(string template, string path, string model, string data, string output) =>
        template.Replace("{path}", path).Replace("{model}", model).Replace("{data}", data).Replace("{out}", output).Split(' ');

    [SkippableTheory]
    [MemberData(nameof(FileFlags))]
    public void AFifoIsRefusedBeforeItIsOpened(string template, string flag)
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "FIFOs are made with mkfifo on Linux");
        using var dir = new TinyLlama.Tests.Formats.TempDir();
        var (model, data) = SftReliabilityTests.WriteModelAndData(dir);
        string fifo = dir.File("fifo");
        using (var mk = Process.Start("mkfifo", fifo)) mk.WaitForExit();
        Assert.True(File.Exists(fifo), "mkfifo failed");
        var run = Task.Run(() => CliRunner.Run(Args(template, fifo, model, data, dir.File("out"))));
        try
        {
            Assert.True(run.Wait(TimeSpan.FromSeconds(60)), $"{flag} on a FIFO did not return (it was opened and blocked)");
        }
        finally
        {
            if (!run.IsCompleted) using (File.OpenWrite(fifo)) { } // releases a reader blocked in open()
        }
        var (code, _, err) = run.Result;
        var line = CliRunner.AssertOneLineError(1, code, err);
        Assert.Contains($"{flag}: {fifo} is not a regular file", line);
    }

    [Theory]
    [MemberData(nameof(FileFlags))]
    public void ADirectoryIsNamedAsOne(string template, string flag)
    {
        using var dir = new TinyLlama.Tests.Formats.TempDir();
        var (model, data) = SftReliabilityTests.WriteModelAndData(dir);
        string folder = dir.File("folder");
        Directory.CreateDirectory(folder);
        var (code, _, err) = CliRunner.Run(Args(template, folder, model, data, dir.File("out")));
        var line = CliRunner.AssertOneLineError(1, code, err);
        // A model PATH may be a directory (Hugging Face layout): an empty one is "not a checkpoint" there.
        Assert.Contains(flag is "--model" or "--teacher" ? $"{folder}" : $"{flag}: {folder} is a directory; expected a file", line);
        if (flag == "--teacher") Assert.DoesNotContain("--model:", line);
    }

    [Theory]
    [InlineData("tokenize --tokenizer t --jsonl j")]
    [InlineData("info --preset stories15M")]
    [InlineData("bench gemm --sizes 8")]
    public void AMalformedDeviceIsAUsageErrorOnEveryVerb(string verb)
    {
        foreach (var device in new[] { "bogus", "cuda:x", "cpu:1:2", "" })
        {
            var (code, _, err) = CliRunner.Run([.. verb.Split(' '), "--device", device]);
            var line = CliRunner.AssertOneLineError(2, code, err);
            Assert.Contains("--device", line);
        }
    }
}
