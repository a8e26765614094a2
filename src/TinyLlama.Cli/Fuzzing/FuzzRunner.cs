// Runs fuzz targets and sorts every input into an outcome class:
//   ok          the loader accepted the input and (for models) two tokens gave finite logits;
//   nonfinite   a model loaded and computed NaN or infinite logits, which the CLI reports as one line
//               (Sampler.CheckFinite: "the model computed a NaN logit ...");
//   clean       the loader threw what Program.Run turns into one line on stderr (CliException,
//               ArgumentException, IOException and so InvalidDataException, NotSupportedException,
//               FormatException, UnauthorizedAccessException), the message is one line, and it names
//               the input (contains the input's directory);
//   unclean     anything else: another exception type (a stack trace in the CLI), a clean type with a
//               multi-line message or one that names no file (an IndexOutOfRange turned into an
//               ArgumentOutOfRangeException, say), more than the time limit per input (a hang), or more
//               managed allocation than 64 x the input's bytes + 32 MiB (a size taken from the file and
//               trusted).
// Inputs run one at a time on a worker thread so a hang is seen from outside it; a hang cannot be
// stopped in .NET, so the run ends there. Allocation is GC.GetAllocatedBytesForCurrentThread on the
// worker (the fuzz run pins the CPU backend to one thread, so the forward pass allocates there too).
using System.Diagnostics;
using System.Text;
using TinyLlama.Backends.Cpu;

namespace TinyLlama.Cli.Fuzzing;

/// <summary>The outcome classes.</summary>
internal enum FuzzOutcome { Ok, NonFinite, Clean, Unclean }

/// <summary>One unclean input: enough to rebuild it (format, case, seed, index) and what happened.</summary>
internal sealed record FuzzFailure(string Format, string Case, ulong Seed, long Index, string Kind, string Message);

/// <summary>Counts per outcome for one format.</summary>
internal sealed class FuzzTally(string format)
{
    public string Format { get; } = format;
    public long[] Counts { get; } = new long[4];
    public long Inputs => Counts.Sum();
    public double Seconds { get; set; }
    public double MaxAllocRatio { get; set; }
    public List<FuzzFailure> Failures { get; } = [];
}

/// <summary>Limits and reproducibility settings of a run.</summary>
internal sealed record FuzzSettings(long Count, ulong Seed, TimeSpan Timeout, int KeepFailures = 20)
{
    /// <summary>Managed bytes an input may allocate per byte of its files.</summary>
    public const long AllocPerInputByte = 64;

    /// <summary>Managed bytes any input may allocate on top.</summary>
    public const long AllocConstant = 32L << 20;
}

internal static class FuzzRunner
{
    /// <summary>
    /// Runs <paramref name="settings"/>.Count inputs against each target (round-robin over its cases) in
    /// directories under <paramref name="work"/>. Stops early on a hang (the stuck thread cannot be reclaimed).
    /// </summary>
    public static List<FuzzTally> Run(IReadOnlyList<FuzzTarget> targets, string work, FuzzSettings settings, Action<FuzzTally>? progress = null)
    {
        int previousThreads = CpuThreads.Count;
        CpuThreads.Count = 1;
        using var worker = new Worker();
        var tallies = new List<FuzzTally>();
        try
        {
            foreach (var target in targets)
            {
                var tally = new FuzzTally(target.Name);
                tallies.Add(tally);
                bool hung = RunTarget(target, work, settings, worker, tally);
                progress?.Invoke(tally);
                if (hung) break;
            }
        }
        finally
        {
            CpuThreads.Count = previousThreads;
        }
        return tallies;
    }

    private static bool RunTarget(FuzzTarget target, string work, FuzzSettings settings, Worker worker, FuzzTally tally)
    {
        var dirs = new string[target.Cases.Count];
        for (int c = 0; c < dirs.Length; c++)
        {
            dirs[c] = Path.Combine(work, target.Name, "case" + c);
            Directory.CreateDirectory(dirs[c]);
            foreach (var (file, bytes) in target.Cases[c].Files) Replace(Path.Combine(dirs[c], file), bytes);
        }
        var clock = Stopwatch.StartNew();
        for (long i = 0; i < settings.Count; i++)
        {
            var fuzzCase = target.Cases[(int)(i % target.Cases.Count)];
            string dir = dirs[i % target.Cases.Count];
            var input = fuzzCase.Mutator.Mutate(FuzzRandom.ForInput(settings.Seed, i));
            Replace(Path.Combine(dir, fuzzCase.Subject), input);
            long inputBytes = fuzzCase.Files.Sum(f => (long)f.Value.Length) - fuzzCase.Files[fuzzCase.Subject].Length + input.Length;

            var (outcome, kind, message, allocated) = worker.Run(() => fuzzCase.Load(dir), dir, settings.Timeout);
            long bound = FuzzSettings.AllocPerInputByte * inputBytes + FuzzSettings.AllocConstant;
            tally.MaxAllocRatio = Math.Max(tally.MaxAllocRatio, (double)allocated / bound);
            if (outcome != FuzzOutcome.Unclean && allocated > bound)
                (outcome, kind, message) = (FuzzOutcome.Unclean, "allocation", $"{allocated:N0} bytes allocated for a {inputBytes:N0}-byte input (bound {bound:N0})");
            tally.Counts[(int)outcome]++;
            if (outcome == FuzzOutcome.Unclean && tally.Failures.Count < settings.KeepFailures)
                tally.Failures.Add(new FuzzFailure(target.Name, fuzzCase.Label, settings.Seed, i, kind!, message!));
            if (kind == "hang") { tally.Seconds = clock.Elapsed.TotalSeconds; return true; }
            // Checkpoint files are memory-mapped and unmapped by finalizers: keep the number of live maps small.
            if (i % 2000 == 1999) { GC.Collect(); GC.WaitForPendingFinalizers(); }
        }
        tally.Seconds = clock.Elapsed.TotalSeconds;
        return false;
    }

    // A new file (not rewritten in place): a mapping of the previous input, if still alive, keeps its own bytes.
    private static void Replace(string path, byte[] bytes)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.Delete(path);
        File.WriteAllBytes(path, bytes);
    }

    /// <summary>Sorts what a loader threw into clean or unclean (see the file header).</summary>
    public static (FuzzOutcome Outcome, string? Kind, string? Message) Classify(Exception e, string dir)
    {
        bool cleanType = e is CliException or ArgumentException or IOException or InvalidDataException or NotSupportedException or FormatException or UnauthorizedAccessException;
        string message = e.Message;
        if (!cleanType) return (FuzzOutcome.Unclean, e.GetType().Name, OneLine(e));
        if (message.Contains('\n') || message.Contains('\r')) return (FuzzOutcome.Unclean, "multi-line " + e.GetType().Name, OneLine(e));
        if (!message.Contains(dir, StringComparison.Ordinal)) return (FuzzOutcome.Unclean, "unnamed " + e.GetType().Name, OneLine(e));
        return (FuzzOutcome.Clean, null, null);
    }

    private static string OneLine(Exception e)
    {
        var frame = new StackTrace(e, fNeedFileInfo: false).GetFrames().FirstOrDefault(f => f.GetMethod()?.DeclaringType?.Namespace?.StartsWith("TinyLlama", StringComparison.Ordinal) == true);
        string where = frame?.GetMethod() is { } m ? $" at {m.DeclaringType?.Name}.{m.Name}" : "";
        return e.Message.ReplaceLineEndings(" | ") + where;
    }

    /// <summary>The per-format table (fixed-width text).</summary>
    public static string Table(IReadOnlyList<FuzzTally> tallies)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"{"format",-16} {"inputs",9} {"ok",8} {"nonfinite",9} {"clean",8} {"unclean",8} {"inputs/s",9} {"max alloc/bound",15}");
        foreach (var t in tallies)
            sb.AppendLine($"{t.Format,-16} {t.Inputs,9} {t.Counts[0],8} {t.Counts[1],9} {t.Counts[2],8} {t.Counts[3],8} {t.Inputs / Math.Max(t.Seconds, 1e-9),9:F0} {t.MaxAllocRatio,15:F3}");
        long total = tallies.Sum(t => t.Inputs), unclean = tallies.Sum(t => t.Counts[3]);
        sb.AppendLine($"{"total",-16} {total,9} {tallies.Sum(t => t.Counts[0]),8} {tallies.Sum(t => t.Counts[1]),9} {tallies.Sum(t => t.Counts[2]),8} {unclean,8}");
        foreach (var f in tallies.SelectMany(t => t.Failures))
            sb.AppendLine($"unclean: {f.Format} case '{f.Case}' seed {f.Seed} input {f.Index}: {f.Kind}: {f.Message}");
        return sb.ToString();
    }

    /// <summary>Runs one input at a time on a background thread, with a time limit and an allocation count.</summary>
    private sealed class Worker : IDisposable
    {
        private readonly SemaphoreSlim start = new(0), done = new(0);
        private readonly Thread thread;
        private Func<LoadResult>? job;
        private string dir = "";
        private (FuzzOutcome, string?, string?, long) result;
        private volatile bool stopping;

        public Worker()
        {
            // The stack the CLI's main thread has on Linux (8 MiB), so recursion that would overflow there overflows here.
            thread = new Thread(Loop, 8 << 20) { IsBackground = true, Name = "fuzz worker" };
            thread.Start();
        }

        public (FuzzOutcome Outcome, string? Kind, string? Message, long Allocated) Run(Func<LoadResult> load, string inputDir, TimeSpan timeout)
        {
            job = load;
            dir = inputDir;
            start.Release();
            if (!done.Wait(timeout)) return (FuzzOutcome.Unclean, "hang", $"no result within {timeout.TotalSeconds:F0} s", 0);
            return result;
        }

        private void Loop()
        {
            while (true)
            {
                start.Wait();
                if (stopping) return;
                long before = GC.GetAllocatedBytesForCurrentThread();
                (FuzzOutcome, string?, string?) r;
                try
                {
                    r = job!() == LoadResult.Ok ? (FuzzOutcome.Ok, null, null) : (FuzzOutcome.NonFinite, null, null);
                }
                catch (Exception e)
                {
                    r = Classify(e, dir);
                }
                result = (r.Item1, r.Item2, r.Item3, GC.GetAllocatedBytesForCurrentThread() - before);
                done.Release();
            }
        }

        public void Dispose()
        {
            stopping = true;
            start.Release();
        }
    }
}
