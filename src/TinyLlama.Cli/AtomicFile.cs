// Atomic file writes: write a temporary file in the same directory, then rename it over the target,
// so an interrupted run never leaves a half-written file.
namespace TinyLlama.Cli;

internal static class AtomicFile
{
    public static void WriteAllText(string path, string text)
    {
        var full = Path.GetFullPath(path);
        var tmp = full + ".tmp-" + Environment.ProcessId;
        File.WriteAllText(tmp, text);
        File.Move(tmp, full, overwrite: true);
    }

    public static void Copy(string source, string destination)
    {
        var full = Path.GetFullPath(destination);
        if (Path.GetFullPath(source) == full) return;
        var tmp = full + ".tmp-" + Environment.ProcessId;
        File.Copy(source, tmp, overwrite: true);
        File.Move(tmp, full, overwrite: true);
    }
}
