// A test-only hook for fault injection: named points in the save sequences (each file's atomic write,
// each step of a checkpoint directory's switch) call Reach, and the environment variable
//
//   TINYLLAMA_FAULT=POINT:N[:ACTION][,POINT:N[:ACTION]...]
//
// makes the process act the N-th time (counted from 1, per process) it reaches POINT. ACTION is
//   kill     SIGKILL this process on the spot (the default): no finally block, no flush, as a power cut
//            or the OOM killer would end it (stdout lines written before are on the pipe: Console.Out
//            flushes every write);
//   enospc   throw the IOException a full disk gives ("No space left on device"), as a write would;
//   hang     block the calling thread for good, as a deadlock would (the data-parallel watchdog's test).
// Besides the save sequence, StepDone marks the end of each training step (to kill one rank of a
// data-parallel run mid-run). Without the variable Reach costs one static field read. The points (the constants below) are named in
// the order a checkpoint save reaches them; tests/TinyLlama.Tests/Cli/FaultInjectionTests.cs kills `sft`
// at each of them and checks that resuming repeats the uninterrupted run bit for bit.
using System.Diagnostics;
using System.Globalization;

namespace TinyLlama.Formats;

/// <summary>Test-only fault injection at named points of the save sequences (environment variable TINYLLAMA_FAULT).</summary>
public static class FaultInjection
{
    /// <summary>The environment variable read once per process.</summary>
    public const string Variable = "TINYLLAMA_FAULT";

    /// <summary>A file's bytes are in its temporary file, which is not yet flushed or renamed into place.</summary>
    public const string AtomicWrite = "atomic-write";
    /// <summary>Every file of a new checkpoint is in its temporary directory; nothing has been renamed.</summary>
    public const string CheckpointTempWritten = "checkpoint-temp-written";
    /// <summary>The old checkpoint has been moved aside and the new one not yet moved in: no checkpoint directory exists.</summary>
    public const string CheckpointOldMoved = "checkpoint-old-moved";
    /// <summary>The new checkpoint is in place; the old copy is not yet deleted.</summary>
    public const string CheckpointSwitched = "checkpoint-switched";
    /// <summary>The save is finished (the old copy deleted).</summary>
    public const string CheckpointSaved = "checkpoint-saved";

    /// <summary>A training step is done (SftTrainer.TrainStep, before it returns): for killing one rank of a data-parallel run mid-run.</summary>
    public const string StepDone = "step-done";

    /// <summary>Every point, in the order a checkpoint save reaches them.</summary>
    public static IReadOnlyList<string> Points { get; } = [AtomicWrite, CheckpointTempWritten, CheckpointOldMoved, CheckpointSwitched, CheckpointSaved];

    private sealed record Fault(string Point, int Hit, string Action);

    private static readonly string? spec = Environment.GetEnvironmentVariable(Variable);
    private static readonly Fault[]? faults = Parse(spec);
    private static readonly Dictionary<string, int> hits = new(StringComparer.Ordinal);

    /// <summary>
    /// Marks that the process reached <paramref name="point"/> (writing <paramref name="path"/>, named in an
    /// injected error); kills the process or throws when TINYLLAMA_FAULT asks for it at this hit.
    /// </summary>
    public static void Reach(string point, string path)
    {
        if (string.IsNullOrWhiteSpace(spec)) return;
        // A malformed value would silently test nothing: it fails the first save instead.
        if (faults is null)
            throw new ArgumentException($"{Variable}={spec}: expected POINT:N[:kill|enospc|hang], comma-separated, POINT one of {string.Join(", ", Points)}, {StepDone}");
        int hit;
        lock (hits)
        {
            hits.TryGetValue(point, out hit);
            hits[point] = ++hit;
        }
        foreach (var f in faults)
        {
            if (f.Point != point || f.Hit != hit) continue;
            if (f.Action == "hang") Thread.Sleep(Timeout.Infinite);
            if (f.Action == "kill")
            {
                using var self = Process.GetCurrentProcess();
                self.Kill(); // SIGKILL on Unix
                Thread.Sleep(Timeout.Infinite);
            }
            throw new IOException($"No space left on device : '{path}' (injected: {Variable}={point}:{hit})");
        }
    }

    // The faults of a well-formed value (none without one); null when the value is malformed.
    private static Fault[]? Parse(string? spec)
    {
        if (string.IsNullOrWhiteSpace(spec)) return [];
        var result = new List<Fault>();
        foreach (var item in spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = item.Split(':');
            if (parts.Length is < 2 or > 3 || !(Points.Contains(parts[0]) || parts[0] == StepDone)
                || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 1
                || (parts.Length == 3 && parts[2] is not ("kill" or "enospc" or "hang")))
                return null;
            result.Add(new Fault(parts[0], n, parts.Length == 2 ? "kill" : parts[2]));
        }
        return result.ToArray();
    }
}
