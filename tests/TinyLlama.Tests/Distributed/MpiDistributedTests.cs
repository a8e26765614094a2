// Issue 17 on localhost: `mpirun --allow-run-as-root --oversubscribe -n 2 tinyllama ...` against one process.
// - the MPI binding itself (mpi-selftest: all-reduce f64/f32, all-gather, broadcast, barrier on 2 ranks);
// - P = 2 ranks with micro-batch b (and 2 accumulation steps) give the per-step losses and final weights of one
//   process with micro-batch 2b, to 1e-5 relative (the reduction order differs), for a full fine-tune and LoRA,
//   with and without ZeRO stage 1, every step checking (--check-replicas) that both ranks' all-reduced
//   gradients are the same bits;
// - a rank that fails ends the job with one line naming it; a rank SIGKILLed mid-run ends the job in bounded
//   time, and resuming with P = 2 from the last checkpoint repeats the uninterrupted run's losses; a rank that
//   hangs (not dead, so mpirun does not notice) makes the other stop at --collective-timeout with one line.
// Skipped with a clear message where mpirun is not on the PATH (CI installs Open MPI: .ci/run).
using System.Diagnostics;
using System.Text.Json;
using TinyLlama.Formats;
using TinyLlama.Tests.Cli;
using TinyLlama.Tests.Formats;

namespace TinyLlama.Tests.Distributed;

public class MpiDistributedTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(90);

    private static string? Mpirun() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists);

    private static string RequireMpirun()
    {
        var mpirun = Mpirun();
        Skip.If(mpirun is null, "mpirun is not on the PATH (install Debian's openmpi-bin and libopenmpi-dev); skipping the MPI tests");
        return mpirun!;
    }

    // mpirun with one app context per rank: each rank's extra environment goes through env(1).
    private static (int Code, string Out, string Err, double Seconds) RunMpi(IReadOnlyList<IReadOnlyDictionary<string, string>> ranks, params string[] args)
    {
        var start = new ProcessStartInfo(RequireMpirun()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--allow-run-as-root", "--oversubscribe" }) start.ArgumentList.Add(a);
        string cli = typeof(TinyLlama.Cli.Program).Assembly.Location;
        for (int r = 0; r < ranks.Count; r++)
        {
            if (r > 0) start.ArgumentList.Add(":");
            start.ArgumentList.Add("-n");
            start.ArgumentList.Add("1");
            if (ranks[r].Count > 0)
            {
                start.ArgumentList.Add("env");
                foreach (var (k, v) in ranks[r]) start.ArgumentList.Add($"{k}={v}");
            }
            start.ArgumentList.Add(CliRunner.DotnetHost);
            start.ArgumentList.Add(cli);
            start.ArgumentList.Add("--threads");
            start.ArgumentList.Add("1");
            foreach (var a in args) start.ArgumentList.Add(a);
        }
        var clock = Stopwatch.StartNew();
        var (code, output, err) = CliRunner.RunProcess(start, Limit);
        return (code, output, err, clock.Elapsed.TotalSeconds);
    }

    private static readonly IReadOnlyDictionary<string, string> NoEnv = new Dictionary<string, string>();

    private static (int Code, string Out, string Err, double Seconds) RunMpi(params string[] args) => RunMpi([NoEnv, NoEnv], args);

    // The JSON objects of the output, one per line (mpirun may put terminal escapes before the first).
    private static List<JsonElement> JsonLines(string output) =>
        output.Split('\n').Where(l => l.Contains('{')).Select(l => JsonDocument.Parse(l[l.IndexOf('{')..]).RootElement.Clone()).ToList();

    private static double[] Losses(string output) => JsonLines(output).Select(j => j.GetProperty("loss").GetDouble()).ToArray();

    private static string[] Sft(string model, string data, string outDir, int batch, params string[] extra) =>
        ["sft", "--model", model, "--data", data, "--format", "alpaca", "--out", outDir, "--no-shuffle", "--json", "--lr", "1e-2",
         "--batch-size", batch.ToString(System.Globalization.CultureInfo.InvariantCulture), .. extra];

    [SkippableFact]
    public void BindingSumsGathersAndBroadcastsOnTwoRanks()
    {
        var (code, output, err, _) = RunMpi("mpi-selftest");
        Assert.True(code == 0, err);
        var json = Assert.Single(JsonLines(output));
        Assert.Equal(2, json.GetProperty("ranks").GetInt32());
        Assert.Equal(3.0, json.GetProperty("allreduce_f64").GetDouble());      // 1 + 2
        Assert.Equal(12.0, json.GetProperty("allreduce_f32").GetDouble());     // (0 + 1) + (10 + 1)
        Assert.Equal("0,100,1,101", json.GetProperty("allgather").GetString());
        Assert.Equal(8, json.GetProperty("broadcast").GetInt32());             // rank 1's 1 + 7
    }

    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public void TwoRanksMatchOneProcessWithTwiceTheMicroBatch(bool lora)
    {
        RequireMpirun();
        using var dir = new TempDir();
        var (model, data) = SftReliabilityTests.WriteModelAndData(dir, records: 8);
        string[] common = ["--steps", "3", "--grad-accum", "2", "--grad-clip", "1", "--weight-decay", "0.01", .. lora ? new[] { "--lora-rank", "4", "--lora-targets", "q,v,down" } : []];
        string single = dir.File("single");
        var one = CliRunner.Run(Sft(model, data, single, 2, common));
        Assert.True(one.Code == 0, one.Err);
        double[] expected = Losses(one.Out);
        Assert.Equal(3, expected.Length);
        foreach (var zero in new[] { "0", "1" })
        {
            string outDir = dir.File("ranks-zero" + zero);
            // Buckets of 64 KB: several per step, so the overlap path launches more than one during backward.
            var two = RunMpi(Sft(model, data, outDir, 1, [.. common, "--zero", zero, "--bucket-mb", "0.0625", "--check-replicas"]));
            Assert.True(two.Code == 0, $"--zero {zero}: {two.Err}");
            var lines = JsonLines(two.Out);
            Assert.Equal(3, lines.Count);
            for (int i = 0; i < 3; i++)
            {
                double loss = lines[i].GetProperty("loss").GetDouble();
                Assert.True(Math.Abs(loss - expected[i]) <= 1e-5 * Math.Abs(expected[i]), $"--zero {zero} step {i + 1}: loss {loss} vs {expected[i]}");
                Assert.Matches("^[0-9a-f]{16}$", lines[i].GetProperty("grad_hash").GetString());
            }
            long full = lines[0].GetProperty("allreduce_bytes").GetInt64() * 2;   // m and v of every trained value, f32
            Assert.Equal(zero == "1" ? full / 2 : full, lines[0].GetProperty("optimizer_state_bytes").GetInt64());
            string weights = lora ? "adapter_model.safetensors" : Checkpoint.SafetensorsName;
            AssertWeightsClose(Path.Combine(single, weights), Path.Combine(outDir, weights), $"--zero {zero}");
            // The checkpoint is in AdamW's full format also under ZeRO (the moments gathered to rank 0).
            AssertWeightsClose(Path.Combine(single, "checkpoint", "optimizer.safetensors"), Path.Combine(outDir, "checkpoint", "optimizer.safetensors"), $"--zero {zero} moments");
        }
    }

    // Same names and shapes; every value within 1e-5 relative of the single process's (plus 1e-7 absolute for
    // values that are near zero, where the different summation order of the gradients shows).
    private static void AssertWeightsClose(string expectedPath, string actualPath, string what)
    {
        var expected = SafetensorsFile.Open(expectedPath);
        var actual = SafetensorsFile.Open(actualPath);
        Assert.Equal(expected.Names.OrderBy(n => n, StringComparer.Ordinal), actual.Names.OrderBy(n => n, StringComparer.Ordinal));
        foreach (var name in expected.Names)
        {
            var a = expected.Get(name).ToArray<double>();
            var b = actual.Get(name).ToArray<double>();
            Assert.Equal(a.Length, b.Length);
            for (int i = 0; i < a.Length; i++)
                Assert.True(Math.Abs(a[i] - b[i]) <= 1e-5 * Math.Abs(a[i]) + 1e-7, $"{what}: {name}[{i}] = {b[i]}, one process {a[i]}");
        }
    }

    [SkippableFact]
    public void ARankThatFailsEndsTheJobWithOneLineNamingIt()
    {
        RequireMpirun();
        using var dir = new TempDir();
        var (model, data) = SftReliabilityTests.WriteModelAndData(dir);
        string corrupt = dir.File("corrupt.jsonl");
        File.WriteAllText(corrupt, "{\"instruction\": \"Say hi.\", \"output\": ");
        // Rank 1 is given a truncated data file, found once MPI is up; rank 0 would wait for it in the first collective.
        var failed = RunMpiEach(model, [data, corrupt], dir.File("out"));
        Assert.NotEqual(0, failed.Code);
        Assert.True(failed.Seconds < Limit.TotalSeconds, $"the job took {failed.Seconds:F0} s");
        var line = Assert.Single(failed.Err.Split('\n'), l => l.StartsWith("tinyllama: ", StringComparison.Ordinal));
        Assert.StartsWith("tinyllama: rank 1 of 2: ", line);
        Assert.Contains("corrupt.jsonl", line);
    }

    // Two ranks whose --data differ.
    private static (int Code, string Out, string Err, double Seconds) RunMpiEach(string model, string[] data, string outDir)
    {
        var start = new ProcessStartInfo(RequireMpirun()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "--allow-run-as-root", "--oversubscribe" }) start.ArgumentList.Add(a);
        for (int r = 0; r < data.Length; r++)
        {
            if (r > 0) start.ArgumentList.Add(":");
            foreach (var a in new[] { "-n", "1", CliRunner.DotnetHost, typeof(TinyLlama.Cli.Program).Assembly.Location, "--threads", "1" }) start.ArgumentList.Add(a);
            foreach (var a in Sft(model, data[r], outDir, 1, "--steps", "2")) start.ArgumentList.Add(a);
        }
        var clock = Stopwatch.StartNew();
        var (code, output, err) = CliRunner.RunProcess(start, Limit);
        return (code, output, err, clock.Elapsed.TotalSeconds);
    }

    [SkippableFact]
    public void KillingARankEndsTheJobAndResumingRepeatsTheLosses()
    {
        RequireMpirun();
        using var dir = new TempDir();
        var (model, data) = SftReliabilityTests.WriteModelAndData(dir, records: 8);
        string[] run = ["--steps", "5", "--save-every", "2", "--seed", "4"];
        var straight = RunMpi(Sft(model, data, dir.File("straight"), 1, run));
        Assert.True(straight.Code == 0, straight.Err);
        double[] expected = Losses(straight.Out);
        Assert.Equal(5, expected.Length);

        // Rank 1 is SIGKILLed at the end of its step 3 (after the checkpoint of step 2); rank 0 is then waiting in a collective.
        string killedDir = dir.File("killed");
        var kill = new Dictionary<string, string> { [FaultInjection.Variable] = $"{FaultInjection.StepDone}:3:kill" };
        var killed = RunMpi([NoEnv, kill], Sft(model, data, killedDir, 1, run));
        Assert.NotEqual(0, killed.Code);
        Assert.True(killed.Seconds < Limit.TotalSeconds, $"the killed job took {killed.Seconds:F0} s");
        Assert.Contains("signal 9", killed.Err);
        Assert.True(File.Exists(Path.Combine(killedDir, "checkpoint", "trainer_state.json")), "no checkpoint before the kill");

        var resumed = RunMpi(Sft(model, data, killedDir, 1, [.. run, "--resume", killedDir]));
        Assert.True(resumed.Code == 0, resumed.Err);
        var lines = JsonLines(resumed.Out);
        Assert.Equal([3, 4, 5], lines.Select(l => l.GetProperty("step").GetInt32()));
        Assert.Equal(expected[2..], lines.Select(l => l.GetProperty("loss").GetDouble()).ToArray());
    }

    [SkippableFact]
    public void ARankThatHangsIsStoppedByTheOthersCollectiveTimeout()
    {
        RequireMpirun();
        using var dir = new TempDir();
        var (model, data) = SftReliabilityTests.WriteModelAndData(dir);
        // Rank 1 blocks for good after step 1; rank 0 waits in step 2's first collective until its 3 s watchdog fires.
        var hang = new Dictionary<string, string> { [FaultInjection.Variable] = $"{FaultInjection.StepDone}:1:hang" };
        var run = RunMpi([NoEnv, hang], Sft(model, data, dir.File("out"), 1, "--steps", "3", "--collective-timeout", "3"));
        Assert.NotEqual(0, run.Code);
        Assert.True(run.Seconds < 45, $"the hung job took {run.Seconds:F0} s");
        var line = Assert.Single(run.Err.Split('\n'), l => l.StartsWith("tinyllama: ", StringComparison.Ordinal));
        Assert.StartsWith("tinyllama: rank 0 of 2: MPI_Allreduce has waited", line);
        Assert.Contains("--collective-timeout 3", line);
    }
}
