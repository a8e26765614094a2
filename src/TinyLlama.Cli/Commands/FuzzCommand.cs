// `tinyllama fuzz [--format F|all] [--count N] [--seed S] [--timeout SEC] [--reference DIR] [--json]`:
// long fuzz runs of every file parser (Fuzzing/: seeds, structure-aware mutators, targets, outcome
// classes). Prints a table per format of how many inputs loaded (ok), loaded with non-finite logits,
// were refused with a clean one-line error, or were unclean (any other exception, a hang, an allocation
// beyond the bound), then each unclean input's seed and index to rebuild it. Exit code 1 when any input
// was unclean. benchmarks/fuzz/run.sh drives it; the CI suite is tests/TinyLlama.Tests/Fuzz.
using System.CommandLine;
using TinyLlama.Cli.Fuzzing;

namespace TinyLlama.Cli.Commands;

internal static class FuzzCommand
{
    public static Command Create()
    {
        var format = new Option<string>("--format") { Description = $"One of {string.Join(", ", FuzzTargets.Names)}, or all", DefaultValueFactory = _ => "all" };
        var count = new Option<long>("--count") { Description = "Inputs per format", DefaultValueFactory = _ => 1000 };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the mutations (same seed, same inputs)", DefaultValueFactory = _ => 1 };
        var timeout = new Option<int>("--timeout") { Description = "Seconds one input may take before it counts as a hang", DefaultValueFactory = _ => 10 };
        var reference = new Option<string?>("--reference") { Description = "A reference data folder (../shared/reference) whose small files are added as seeds" };
        var json = new Option<bool>("--json") { Description = "One JSON object per format instead of the table" };
        var cmd = new Command("fuzz", "Fuzz every file parser with mutated inputs and count the outcomes (a reliability check).")
        {
            format, count, seed, timeout, reference, json,
        };
        cmd.SetAction(parse =>
        {
            string f = parse.GetValue(format)!;
            long n = parse.GetValue(count);
            if (n < 1) throw new CliException($"--count must be an integer >= 1, got {n}", isUsage: true);
            int seconds = OptionRange.Check("--timeout", parse.GetValue(timeout), 1, 3600);
            string? refDir = parse.GetValue(reference);
            if (refDir is not null && !Directory.Exists(refDir)) throw new CliException($"--reference: {refDir} is not a directory", isUsage: true);
            var names = f == "all" ? FuzzTargets.Names : [f];
            if (!FuzzTargets.Names.Contains(f) && f != "all")
                throw new CliException($"--format: unknown format '{f}'; expected one of {string.Join(", ", FuzzTargets.Names)} or all", isUsage: true);

            var output = parse.InvocationConfiguration.Output;
            bool asJson = parse.GetValue(json);
            // Under /dev/shm where there is one: each input is a file write, which should not reach a disk.
            var work = Directory.CreateDirectory(Path.Combine(Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath(), "tinyllama-fuzz-" + Guid.NewGuid().ToString("N")));
            try
            {
                var targets = FuzzTargets.Create(names, work.FullName, refDir);
                var settings = new FuzzSettings(n, parse.GetValue(seed), TimeSpan.FromSeconds(seconds));
                var tallies = FuzzRunner.Run(targets, work.FullName, settings, t =>
                {
                    if (asJson)
                        output.WriteLine(JsonLine.Format(("format", t.Format), ("inputs", t.Inputs), ("ok", t.Counts[0]), ("nonfinite", t.Counts[1]),
                            ("clean", t.Counts[2]), ("unclean", t.Counts[3]), ("seconds", t.Seconds), ("max_alloc_over_bound", t.MaxAllocRatio)));
                });
                if (!asJson) output.Write(FuzzRunner.Table(tallies));
                else foreach (var failure in tallies.SelectMany(t => t.Failures))
                        output.WriteLine(JsonLine.Format(("unclean", failure.Format), ("case", failure.Case), ("seed", failure.Seed), ("input", failure.Index), ("kind", failure.Kind), ("message", failure.Message)));
                return tallies.Sum(t => t.Counts[(int)FuzzOutcome.Unclean]) == 0 ? ExitCodes.Success : ExitCodes.Failure;
            }
            finally
            {
                try { work.Delete(recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            }
        });
        return cmd;
    }
}
