// Replacing a checkpoint directory so that an interruption at any moment leaves one complete copy that
// resume finds. POSIX rename(2) replaces a file atomically but not a non-empty directory, so the switch
// takes two renames, and recovery covers the moment between them:
//
//   1. write every file into .NAME.tmp-PID (each file atomically, the marker files last)
//   2. NAME -> .NAME.old-PID           (from here to step 3 there is no NAME on disk)
//   3. .NAME.tmp-PID -> NAME
//   4. delete .NAME.old-PID
//
// A copy is complete when every required file is in it: each is renamed into place whole, and a
// half-deleted copy lacks some. Recover runs before every save and every load: when NAME is missing it
// promotes the newest complete copy (a finished .tmp, which is newer than any .old, else an .old), and
// then deletes every other .NAME.tmp-* and .NAME.old-*, so interrupted saves leave nothing behind.
// One writer per checkpoint directory is assumed (as for the output directory of a run). Each step above
// is a named point of Formats/FaultInjection.cs, where tests kill the process to check all of this.
using TinyLlama.Formats;

namespace TinyLlama.Training.Trainer;

/// <summary>Atomic replacement and crash recovery of a directory of checkpoint files.</summary>
public static class CheckpointDirectory
{
    /// <summary>
    /// Writes a new version of <paramref name="dir"/>: <paramref name="write"/> fills a temporary sibling
    /// directory (its argument), which then replaces <paramref name="dir"/>. On failure the temporary
    /// directory is removed and the previous version stays. <paramref name="requiredFiles"/> must all exist
    /// when <paramref name="write"/> returns.
    /// </summary>
    public static void Commit(string dir, IReadOnlyList<string> requiredFiles, Action<string> write)
    {
        var full = Path.GetFullPath(dir);
        var parent = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        Recover(full, requiredFiles);
        var tmp = Sibling(full, TempTag);
        try
        {
            Directory.CreateDirectory(tmp);
            write(tmp);
            if (!IsComplete(tmp, requiredFiles))
                throw new InvalidOperationException($"{tmp}: the checkpoint writer did not write every required file");
            FaultInjection.Reach(FaultInjection.CheckpointTempWritten, tmp);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
        if (!Directory.Exists(full))
        {
            Directory.Move(tmp, full);
        }
        else
        {
            var backup = Sibling(full, BackupTag);
            Directory.Move(full, backup);
            FaultInjection.Reach(FaultInjection.CheckpointOldMoved, full);
            Directory.Move(tmp, full);
            FaultInjection.Reach(FaultInjection.CheckpointSwitched, full);
            TryDelete(backup);
        }
        FaultInjection.Reach(FaultInjection.CheckpointSaved, full);
    }

    /// <summary>
    /// Finishes or undoes an interrupted <see cref="Commit"/> of <paramref name="dir"/>: when it is missing,
    /// the newest complete temporary or backup copy becomes <paramref name="dir"/>; every other leftover
    /// copy is deleted. Returns true when <paramref name="dir"/> exists afterwards.
    /// </summary>
    public static bool Recover(string dir, IReadOnlyList<string> requiredFiles)
    {
        var full = Path.GetFullPath(dir);
        var parent = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(parent)) return false;
        var leftovers = Leftovers(full);
        if (!Directory.Exists(full))
        {
            // A complete .tmp was finished before the old copy was moved aside: it is the newer one.
            var best = leftovers.Where(d => IsComplete(d, requiredFiles))
                .OrderByDescending(d => Path.GetFileName(d).Contains(TempTag, StringComparison.Ordinal))
                .ThenByDescending(d => Directory.GetLastWriteTimeUtc(d))
                .FirstOrDefault();
            if (best is not null)
            {
                Directory.Move(best, full);
                leftovers.Remove(best);
            }
        }
        foreach (var d in leftovers) TryDelete(d);
        return Directory.Exists(full);
    }

    /// <summary>The temporary and backup siblings an interrupted save of <paramref name="dir"/> may have left.</summary>
    public static List<string> Leftovers(string dir)
    {
        var full = Path.GetFullPath(dir);
        var parent = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(parent)) return [];
        string name = Path.GetFileName(full);
        return Directory.GetDirectories(parent, "." + name + ".*")
            .Where(d => Path.GetFileName(d) is var n && (n.StartsWith("." + name + TempTag, StringComparison.Ordinal) || n.StartsWith("." + name + BackupTag, StringComparison.Ordinal)))
            .ToList();
    }

    private const string TempTag = ".tmp-";
    private const string BackupTag = ".old-";

    private static string Sibling(string full, string tag) =>
        Path.Combine(Path.GetDirectoryName(full)!, "." + Path.GetFileName(full) + tag + Environment.ProcessId);

    private static bool IsComplete(string dir, IReadOnlyList<string> requiredFiles) =>
        requiredFiles.All(f => File.Exists(Path.Combine(dir, f)));

    private static void TryDelete(string dir)
    {
        try
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Left for the next Recover; a leftover never hides or replaces a complete checkpoint.
        }
    }
}
