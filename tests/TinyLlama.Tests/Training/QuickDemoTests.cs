// `tinyllama demo --quick` end to end: the before/after table, the artefacts that `tinyllama generate`
// loads, and the claim README makes of the demo: fine-tuning beats the base model by a wide margin on
// every SIMD path (AVX-512, AVX2, 128-bit vectors), and a path repeats its numbers exactly.
using System.Globalization;
using System.Text.RegularExpressions;
using TinyLlama.Tests.Cli;
using TinyLlama.Tests.Formats;
using TinyLlama.Training.Demo;

namespace TinyLlama.Tests.Training;

public class QuickDemoTests(QuickDemoTests.QuickDemo quick) : IClassFixture<QuickDemoTests.QuickDemo>
{
    [Fact]
    public void QuickDemoRunsEndToEndAndTuningBeatsTheBase()
    {
        var run = quick.Run;
        // --eval-every 200 (the in-process run only): scores at steps 200, 400, 600 of 800 pre-training steps
        // and at step 200 of 300 tuning steps, none at the end of a stage (the run's own lines follow).
        Assert.Equal(["200", "400", "600"], Regex.Matches(run.Out,
            @"(?m)^   step (\d+): completes \d+% \(arithmetic \d+%, reverse \d+%, sort \d+%, count \d+%, format \d+%\) of the held-out sentences$").Select(m => m.Groups[1].Value));
        Assert.Equal(["200"], Regex.Matches(run.Out,
            @"(?m)^   step (\d+): answers \d+% \(arithmetic \d+%, reverse \d+%, sort \d+%, count \d+%, format \d+%\) of the held-out instructions$").Select(m => m.Groups[1].Value));
        var table = DemoRun.Table(run.Out);
        Assert.Equal(DemoDataset.Families.Count + 2, table.Length); // header, families, overall
        Assert.Matches(@"^\s+family\s+base model\s+fine-tuned$", table[0]);
        foreach (var family in DemoDataset.Families) Assert.Contains(table, l => l.TrimStart().StartsWith(family + " ", StringComparison.Ordinal));
        Assert.Matches(@"^\s+overall\s+\d+/\d+\s+[\d.]+%\s+\d+/\d+\s+[\d.]+%$", table[^1]);
        run.AssertTuningWins("the test process");

        foreach (var f in new[] { "tokenizer.json", "base/config.json", "base/model.safetensors", "base/tokenizer.json", "base/loss.png",
                     "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json", "adapter/loss.png",
                     "data/train.json", "data/test.json", "data/pretrain.txt", "data/prompt.txt" })
            Assert.True(File.Exists(Path.Combine(quick.Dir.Path, f)), f);
        var generated = CliRunner.Run("generate", "--model", Path.Combine(quick.Dir.Path, "adapter"), "--prompt", File.ReadAllText(Path.Combine(quick.Dir.Path, "data", "prompt.txt")), "--max-tokens", "8");
        Assert.True(generated.Code == 0, generated.Err);
    }

    /// <summary>
    /// `demo --stage preferences` over the quick run's output: every step reports, the Self-Instruct counts add
    /// up, the pairs exist, and the exact-match judge agrees with the exact-match scores (it cannot be fooled by
    /// position, so no verdict is inconsistent, and DPO's wins minus losses is its correct answers minus the
    /// tuned model's). Whether DPO helps is the full run's claim (README), not the quick run's.
    /// </summary>
    private static int Int(Match m, int group) => int.Parse(m.Groups[group].Value, CultureInfo.InvariantCulture);

    [Fact]
    public void PreferenceStageRunsOverTheQuickDemo()
    {
        Assert.True(quick.Run.Code == 0, quick.Run.Err);
        var (code, output, err) = CliRunner.Run([.. DemoRun.Arguments(quick.Dir.Path), "--stage", "preferences"]);
        Assert.True(code == 0, err + output);
        var si = Regex.Match(output, @"the tuned model answered (\d+) new inputs of their shapes, the verifier kept (\d+)\.\n\s+Removed: (.*)\.");
        Assert.True(si.Success, output);
        int candidates = int.Parse(si.Groups[1].Value, CultureInfo.InvariantCulture), kept = int.Parse(si.Groups[2].Value, CultureInfo.InvariantCulture);
        int removed = Regex.Matches(si.Groups[3].Value, @"(\d+)").Sum(m => int.Parse(m.Value, CultureInfo.InvariantCulture));
        Assert.Equal(candidates, kept + removed);
        var pairs = Regex.Match(output, @"answered (\d+) distinct training prompts \((\d+) from the training set, (\d+) fresh\) greedily, (\d+) right; .*: (\d+) got a right answer .*, (\d+) none\.");
        Assert.True(pairs.Success, output);
        int[] p = Enumerable.Range(1, 6).Select(i => int.Parse(pairs.Groups[i].Value, CultureInfo.InvariantCulture)).ToArray();
        Assert.Equal(p[0], p[1] + p[2]);
        Assert.True(p[2] > 0, output);
        Assert.Equal(p[0], p[3] + p[4] + p[5]);
        Assert.True(p[4] >= 4, output);
        // Held-out items: the test set and fresh items.
        Assert.Matches(@"of the \d+ test items and \d+/\d+ [\d.]+% of \d+ fresh held-out items", output);
        Assert.Matches(@"DPO \(beta 0\.1, RPO alpha 1, .*reward margin -?[\d.]+, pair accuracy \d+%", output);
        // Checkpoints against step 0 (the tuned model) on the validation items: each score is step 0's plus the items
        // gained minus those lost; the kept one is the best of those McNemar's test calls better, or step 0 if none is.
        var start = Regex.Match(output, @"Kept step (\d+)(?:, the tuned model \((\d+)/\d+ on the validation items|: validation exact match (\d+)/\d+ at step 0, (\d+)/\d+ there)");
        Assert.True(start.Success, output);
        int keptStep = int.Parse(start.Groups[1].Value, CultureInfo.InvariantCulture);
        int startScore = int.Parse(start.Groups[keptStep == 0 ? 2 : 3].Value, CultureInfo.InvariantCulture);
        var checkpoints = Regex.Matches(output, @"step (\d+): validation (\d+)/\d+ \(\+(\d+) -(\d+) against step 0(, better by McNemar's test)?\)")
            .Select(m => (Step: Int(m, 1), Score: Int(m, 2), Gained: Int(m, 3), Lost: Int(m, 4), Better: m.Groups[5].Success)).ToList();
        // DPO makes 3 passes over its pairs (at least one step per checkpoint, at most the quick run's 20 steps), with
        // its 2 checkpoints evenly over them.
        var dpoRun = Regex.Match(output, @"DPO \(.*, (\d+) steps of 8 pairs: 3 passes over (\d+) pairs, at most 20;");
        Assert.True(dpoRun.Success, output);
        int dpoSteps = Int(dpoRun, 1), dpoPairs = Int(dpoRun, 2);
        Assert.Equal(Math.Clamp((3 * dpoPairs + 7) / 8, 2, 20), dpoSteps);
        int every = (dpoSteps + 1) / 2;
        Assert.Equal([every, dpoSteps], checkpoints.Select(c => c.Step));
        Assert.All(checkpoints, c => Assert.Equal(startScore + c.Gained - c.Lost, c.Score));
        var better = checkpoints.Where(c => c.Better).ToList();
        Assert.Equal(better.Count == 0 ? 0 : better.OrderByDescending(c => c.Score).ThenBy(c => c.Step).First().Step, keptStep);
        Assert.Matches(@"held-out pair accuracy \d+% on \d+ pairs", output);
        var scores = Regex.Match(output, @"Exact match next to it: tuned (\d+)/(\d+) [\d.]+%, DPO (\d+)/\d+");
        Assert.True(scores.Success, output);
        var exact = Regex.Match(output, @"(?m)^\s+exact match\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$");
        Assert.True(exact.Success, output);
        int[] e = Enumerable.Range(1, 4).Select(i => int.Parse(exact.Groups[i].Value, CultureInfo.InvariantCulture)).ToArray();
        Assert.Equal(int.Parse(scores.Groups[2].Value, CultureInfo.InvariantCulture), e[0] + e[1] + e[2]);
        Assert.Equal(0, e[3]);
        Assert.Equal(int.Parse(scores.Groups[3].Value, CultureInfo.InvariantCulture) - int.Parse(scores.Groups[1].Value, CultureInfo.InvariantCulture), e[0] - e[2]);
        Assert.Matches(@"(?m)^\s+reward model\s+\d+\s+\d+\s+\d+\s+\d+$", output);

        var missing = CliRunner.Run("demo", "--quick", "--stage", "preferences", "--out", Path.Combine(quick.Dir.Path, "nothing-here"));
        Assert.Equal(1, missing.Code);
        Assert.Contains("holds no finished demo run", missing.Err);
    }

    /// <summary>
    /// The quick demo in child processes on the other SIMD paths .NET can be told to take: the AVX2 paths
    /// (DOTNET_EnableAVX512=0; on a CPU without AVX-512 that is the default path again) and 128-bit vectors
    /// with the portable GEMM kernel (DOTNET_EnableAVX2=0). Float sums round differently on each, so the
    /// counts may differ between paths, but on each the adapter must beat the base model by a wide margin;
    /// two runs on the same path (another process, another JIT; the in-process run also scored the model
    /// halfway, which must not change its training) must print the same table.
    /// </summary>
    [Fact]
    public void QuickDemoTuningBeatsTheBaseOnEveryVectorPathAndRepeatsExactlyOnTheSamePath()
    {
        var runs = new List<(string Switch, DemoRun Run)> { ("none (in the test process)", quick.Run) };
        foreach (var (variable, maxBits) in new[] { ("DOTNET_EnableAVX512", 256), ("DOTNET_EnableAVX2", 128) })
        {
            var run = DemoRun.InChild(new Dictionary<string, string> { [variable] = "0" });
            Assert.True(run.VectorBits <= maxBits, $"{variable}=0 still ran on {run.Path}");
            runs.Add(($"{variable}=0", run));
        }
        if (!runs.Skip(1).Any(r => r.Run.Path == quick.Run.Path))
            runs.Add(("none (a child process)", DemoRun.InChild(new Dictionary<string, string>())));

        foreach (var (variable, run) in runs) run.AssertTuningWins($"{variable}, {run.Path}");
        foreach (var group in runs.GroupBy(r => r.Run.Path))
            foreach (var (variable, run) in group.Skip(1))
                Assert.True(DemoRun.Table(group.First().Run.Out).SequenceEqual(DemoRun.Table(run.Out)),
                    $"two runs on {group.Key} printed different tables:\n{string.Join('\n', DemoRun.Table(group.First().Run.Out))}\n{string.Join('\n', DemoRun.Table(run.Out))}");
    }

    /// <summary>One in-process `tinyllama demo --quick --seed 5 --eval-every 200` shared by the tests of this class (about 40 s on two cores).</summary>
    public sealed class QuickDemo : IDisposable
    {
        public QuickDemo()
        {
            Dir = new TempDir();
            var (code, output, err) = CliRunner.Run([.. DemoRun.Arguments(Dir.Path), "--eval-every", "200"]);
            Run = new DemoRun(code, output, err);
        }

        public TempDir Dir { get; }
        public DemoRun Run { get; }

        public void Dispose() => Dir.Dispose();
    }

    /// <summary>What a quick demo run printed.</summary>
    public sealed record DemoRun(int Code, string Out, string Err)
    {
        public static string[] Arguments(string outDir) => ["demo", "--quick", "--out", outDir, "--seed", "5"];

        /// <summary>The quick demo in a child process with <paramref name="environment"/> added.</summary>
        public static DemoRun InChild(Dictionary<string, string> environment)
        {
            using var dir = new TempDir();
            var (code, output, err) = CliRunner.RunProcess(environment, TimeSpan.FromMinutes(10), Arguments(dir.Path));
            return new DemoRun(code, output, err);
        }

        /// <summary>The SIMD path from the "CPU path:" line, without the thread count: "256-bit vectors, AVX2 GEMM kernel".</summary>
        public string Path
        {
            get
            {
                var m = Regex.Match(Out, @"^CPU path: (.+?), \d+ threads?", RegexOptions.Multiline);
                Assert.True(m.Success, "no CPU path line in the output:\n" + Out + Err);
                return m.Groups[1].Value;
            }
        }

        public int VectorBits => Path.StartsWith("no SIMD", StringComparison.Ordinal) ? 0 : int.Parse(Path[..Path.IndexOf('-')], CultureInfo.InvariantCulture);

        /// <summary>
        /// The base model answers almost none of the held-out instructions (it never saw the template) and
        /// the tuned one at least 20 points more: about 30% on every path measured (count and most of sort).
        /// </summary>
        public void AssertTuningWins(string where)
        {
            Assert.True(Code == 0, $"{where}: exit code {Code}\n{Err}");
            var m = Regex.Match(Table(Out)[^1], @"overall\s+(\d+)/(\d+)\s+[\d.]+%\s+(\d+)/(\d+)");
            Assert.True(m.Success, Table(Out)[^1]);
            double before = Percent(m.Groups[1].Value, m.Groups[2].Value), after = Percent(m.Groups[3].Value, m.Groups[4].Value);
            Assert.True(before <= 5, $"{where}: the base model answered {before}% of the instructions");
            Assert.True(after >= before + 20, $"{where}: fine-tuned {after}% vs base {before}%\n{string.Join('\n', Table(Out))}");

            static double Percent(string correct, string total) => 100.0 * int.Parse(correct, CultureInfo.InvariantCulture) / int.Parse(total, CultureInfo.InvariantCulture);
        }

        /// <summary>The before/after table: header, one line per family, overall.</summary>
        public static string[] Table(string output)
        {
            var lines = output.Split('\n').Select(l => l.TrimEnd('\r')).ToList();
            int start = lines.FindIndex(l => l.TrimStart().StartsWith("family ", StringComparison.Ordinal));
            Assert.True(start >= 0, "no table in the output:\n" + output);
            int end = lines.FindIndex(start, l => l.TrimStart().StartsWith("overall ", StringComparison.Ordinal));
            return lines.GetRange(start, end - start + 1).ToArray();
        }
    }
}
