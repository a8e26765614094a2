// Issue 13's fault injection: `sft` (a tiny model, 6 steps, a checkpoint every step) runs as a child process
// and dies by SIGKILL at every named point of the save sequence (Formats/FaultInjection.cs: inside a file's
// atomic write, with the new checkpoint's temporary complete, between the switch's two renames, after the
// switch, after the save), at a hit drawn from a fixed seed, and once from outside at a random moment; then
// `--resume` continues, and every step's loss and the final weights must equal an uninterrupted run's bit
// for bit, with no temporary copy left behind. A full disk during a save, injected (ENOSPC at the N-th file
// write) and, where this machine lets the tests mount one, a real small tmpfs, must end the run with one
// line, leave the previous checkpoint intact and loadable, and remove the partial temporary.
using System.Diagnostics;
using System.Text.Json.Nodes;
using TinyLlama.Formats;
using TinyLlama.Tests.Formats;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Tests.Cli;

/// <summary>The model, the data and the uninterrupted run every trial is compared with (made once per class).</summary>
public sealed class UninterruptedSft : IDisposable
{
    public const int Steps = 6;
    public TempDir Dir { get; } = new();
    public string Model { get; }
    public string Data { get; }
    public string OutDir { get; }
    public IReadOnlyDictionary<int, double> Losses { get; }

    public UninterruptedSft()
    {
        (Model, Data) = SftReliabilityTests.WriteModelAndData(Dir);
        OutDir = Dir.File("straight");
        var (code, output, err) = FaultInjectionTests.Child(null, Args(OutDir, resume: false));
        Assert.True(code == 0, err);
        Losses = FaultInjectionTests.StepLosses(output);
        Assert.Equal(Enumerable.Range(1, Steps), Losses.Keys.Order());
    }

    /// <summary>The same run every time: one thread (so sums are ordered the same), a checkpoint after every step.</summary>
    public string[] Args(string outDir, bool resume) =>
        ["sft", "--model", Model, "--data", Data, "--format", "alpaca", "--out", outDir, "--no-shuffle", "--json", "--threads", "1",
         "--lr", "1e-3", "--steps", $"{Steps}", "--batch-size", "2", "--save-every", "1", .. resume ? new[] { "--resume", outDir } : []];

    public void Dispose() => Dir.Dispose();
}

public class FaultInjectionTests(UninterruptedSft straight) : IClassFixture<UninterruptedSft>
{
    private const int Killed = 128 + 9; // what .NET reports for a child ended by SIGKILL
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    internal static (int Code, string Out, string Err) Child(string? fault, string[] args) =>
        CliRunner.RunProcess(fault is null ? new Dictionary<string, string>() : new() { [FaultInjection.Variable] = fault }, Limit, args);

    /// <summary>step -> loss from the --json lines.</summary>
    internal static Dictionary<int, double> StepLosses(string output) =>
        output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonNode.Parse(l)!)
            .ToDictionary(j => (int)j["step"]!, j => (double)j["loss"]!);

    // Hits drawn once from a fixed seed, each where the point is reached in the first run's six saves and
    // leaves a checkpoint to resume: three atomic writes a save (weights, moments, state) and the model at
    // the end (19 in all; the first save's three leave none); the switch's renames from the second save on.
    public static TheoryData<string, string?> Faults()
    {
        var random = new Random(13);
        return new()
        {
            { $"{FaultInjection.AtomicWrite}:{random.Next(4, 20)}", null },
            { $"{FaultInjection.CheckpointTempWritten}:{random.Next(2, 7)}", null },
            { $"{FaultInjection.CheckpointOldMoved}:{random.Next(1, 6)}", $"{FaultInjection.CheckpointSwitched}:1" }, // and the resumed run killed too
            { $"{FaultInjection.CheckpointSwitched}:{random.Next(1, 6)}", null },
            { $"{FaultInjection.CheckpointSaved}:{random.Next(1, 7)}", null },
        };
    }

    [Theory]
    [MemberData(nameof(Faults))]
    public void KilledAtANamedPointThenResumedRepeatsTheUninterruptedRun(string fault, string? faultOnResume)
    {
        using var dir = new TempDir();
        string outDir = dir.File("out");
        var seen = new Dictionary<int, double>();
        var first = Child(fault, straight.Args(outDir, resume: false));
        Assert.True(first.Code == Killed, $"exit code {first.Code}, expected death by SIGKILL at {fault}: {first.Err}");
        Collect(first.Out, seen);
        if (faultOnResume is not null)
        {
            var second = Child(faultOnResume, straight.Args(outDir, resume: true));
            Assert.True(second.Code == Killed, $"exit code {second.Code}, expected death by SIGKILL at {faultOnResume}: {second.Err}");
            Collect(second.Out, seen);
        }
        ResumeAndCompare(outDir, seen);
    }

    [Fact]
    public void KilledFromOutsideAtRandomMomentsThenResumedRepeatsTheUninterruptedRun()
    {
        var random = new Random(26);
        for (int trial = 0; trial < 2; trial++)
        {
            using var dir = new TempDir();
            string outDir = dir.File("out");
            var seen = new Dictionary<int, double>();
            // After the second step's line the first checkpoint exists (it is saved before step 2 runs), so
            // the kill lands in a training step or a save, and resume always has a checkpoint to start from.
            Collect(KillAfter(straight.Args(outDir, resume: false), afterStep: random.Next(2, UninterruptedSft.Steps), delayMs: random.Next(0, 40)), seen);
            ResumeAndCompare(outDir, seen);
        }
    }

    [Fact]
    public void FullDiskInjectedDuringASaveKeepsThePreviousCheckpoint()
    {
        using var dir = new TempDir();
        string outDir = dir.File("out");
        // Writes 1-3 are the first save's; the 5th is the second save's moments file.
        var full = Child($"{FaultInjection.AtomicWrite}:5:enospc", straight.Args(outDir, resume: false));
        string checkpoint = Path.Combine(outDir, "checkpoint");
        var line = CliRunner.AssertOneLineError(1, full.Code, full.Err);
        Assert.Contains("No space left on device", line);
        Assert.Contains($"{checkpoint}: the checkpoint of step 2 could not be written", line);
        Assert.Contains($"the previous checkpoint is intact (continue with --resume {checkpoint})", line);
        AssertPreviousCheckpointKept(outDir, full.Out, savedStep: 1);
        var seen = StepLosses(full.Out);
        ResumeAndCompare(outDir, seen);
    }

    [SkippableFact]
    public void FullTmpfsDuringASaveKeepsThePreviousCheckpoint()
    {
        Skip.IfNot(OperatingSystem.IsLinux() && Environment.UserName == "root", "mounting a tmpfs needs root on Linux");
        using var dir = new TempDir();
        string mount = dir.File("small");
        Directory.CreateDirectory(mount);
        // Room for one checkpoint and a half: the second save cannot finish (its temporary copy sits beside the first).
        long checkpointBytes = Directory.GetFiles(Path.Combine(straight.OutDir, "checkpoint")).Sum(f => (new FileInfo(f).Length + 4095) / 4096 * 4096);
        long size = (checkpointBytes * 3 / 2 + 4095) / 4096 * 4096;
        Skip.IfNot(Tool("mount", "-t", "tmpfs", "-o", $"size={size}", "tmpfs", mount) == 0, "this machine does not let the tests mount a tmpfs");
        try
        {
            string outDir = Path.Combine(mount, "out");
            var full = Child(null, straight.Args(outDir, resume: false));
            var line = CliRunner.AssertOneLineError(1, full.Code, full.Err);
            Assert.Contains("No space left on device", line);
            int saved = StepLosses(full.Out).Keys.Max() - 1;
            Assert.True(saved >= 1, line);
            AssertPreviousCheckpointKept(outDir, full.Out, saved);

            // The copy left on the full disk resumes (elsewhere, with room) to the uninterrupted result.
            string elsewhere = dir.File("resumed");
            Directory.CreateDirectory(elsewhere);
            string moved = Path.Combine(elsewhere, "checkpoint");
            Directory.CreateDirectory(moved);
            foreach (var f in Directory.GetFiles(Path.Combine(outDir, "checkpoint"))) File.Copy(f, Path.Combine(moved, Path.GetFileName(f)));
            var seen = StepLosses(full.Out);
            ResumeAndCompare(elsewhere, seen);
        }
        finally
        {
            Tool("umount", mount);
        }
    }

    // ---------------- helpers ----------------

    // Resumes the run in outDir without a fault, then compares it with the uninterrupted run.
    private void ResumeAndCompare(string outDir, Dictionary<int, double> seen)
    {
        var last = Child(null, straight.Args(outDir, resume: true));
        Assert.True(last.Code == 0, last.Err);
        Collect(last.Out, seen);
        AssertSameAsUninterrupted(outDir, seen);
    }

    // Adds a run's step losses, each equal to the uninterrupted run's and to any earlier run's for that step.
    private void Collect(string output, Dictionary<int, double> seen)
    {
        foreach (var (step, loss) in StepLosses(output))
        {
            Assert.True(BitConverter.DoubleToInt64Bits(loss) == BitConverter.DoubleToInt64Bits(straight.Losses[step]), $"step {step}: loss {loss:R}, uninterrupted {straight.Losses[step]:R}");
            seen[step] = loss;
        }
    }

    private void AssertSameAsUninterrupted(string outDir, Dictionary<int, double> seen)
    {
        Assert.Equal(Enumerable.Range(1, UninterruptedSft.Steps), seen.Keys.Order());
        string name = TinyLlama.Formats.Checkpoint.SafetensorsName;
        Assert.True(File.ReadAllBytes(Path.Combine(straight.OutDir, name)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(outDir, name))), "final weights differ from the uninterrupted run's");
        Assert.Empty(CheckpointDirectory.Leftovers(Path.Combine(outDir, "checkpoint")));
    }

    // The failed save left the checkpoint of savedStep, complete, and nothing temporary beside or in it.
    private static void AssertPreviousCheckpointKept(string outDir, string output, int savedStep)
    {
        string checkpoint = Path.Combine(outDir, "checkpoint");
        Assert.Equal(savedStep + 1, StepLosses(output).Keys.Max()); // the step whose save failed was the last to run
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(checkpoint, "trainer_state.json")))!;
        Assert.Equal(savedStep, (int)state["step"]!);
        Assert.Empty(CheckpointDirectory.Leftovers(checkpoint));
        Assert.Equal(SftTrainer.CheckpointFiles.Order(), Directory.GetFiles(checkpoint).Select(Path.GetFileName).Order()!);
        Assert.DoesNotContain(Directory.GetFiles(outDir, "*", SearchOption.AllDirectories), f => f.Contains(".tmp", StringComparison.Ordinal) || f.EndsWith(".partial", StringComparison.Ordinal));
        Assert.False(File.Exists(Path.Combine(outDir, TinyLlama.Formats.Checkpoint.SafetensorsName)));
    }

    // Runs the child and SIGKILLs it delayMs after its line for afterStep appears; returns its stdout.
    private static string KillAfter(string[] args, int afterStep, int delayMs)
    {
        using var process = Process.Start(CliRunner.ProcessStart(new Dictionary<string, string>(), args))!;
        var stderr = process.StandardError.ReadToEndAsync();
        var output = new System.Text.StringBuilder();
        var deadline = Stopwatch.StartNew();
        while (process.StandardOutput.ReadLine() is string line)
        {
            output.Append(line).Append('\n');
            if ((int)JsonNode.Parse(line)!["step"]! == afterStep)
            {
                Thread.Sleep(delayMs);
                process.Kill();
                break;
            }
            Assert.True(deadline.Elapsed < Limit, "sft did not reach the step in time");
        }
        output.Append(process.StandardOutput.ReadToEnd()); // lines written before the kill
        Assert.True(process.WaitForExit(Limit));
        Assert.True(process.ExitCode is Killed or 0, $"exit code {process.ExitCode}: {stderr.Result}");
        return output.ToString();
    }

    private static int Tool(string name, params string[] args)
    {
        try
        {
            var start = new ProcessStartInfo(name) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var a in args) start.ArgumentList.Add(a);
            using var p = Process.Start(start)!;
            p.StandardOutput.ReadToEnd();
            p.StandardError.ReadToEnd();
            p.WaitForExit();
            return p.ExitCode;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return -1; // no such program
        }
    }
}
