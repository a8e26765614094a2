// The text files a user names on the command line (perplexity --file and --ids-file, quantize --calib,
// tokenize --jsonl) are read here, strictly as UTF-8 (Formats/Utf8Text.cs): a missing file or an invalid
// byte is one line naming the flag, the file and the byte offset, never text with U+FFFD in it.
//
// Every path that must be a file (these, sft --data, a model or tokenizer file) goes through RequireFile
// first: a directory is named as one, and a FIFO, socket or device is refused before it is opened, since
// opening a FIFO blocks until something writes to it and a device may never end. .NET reports such files as
// ordinary ("Normal" attributes, length 0), so the file type comes from statx(2) on Linux, whose struct
// layout is the same on every architecture (stx_mode: 16 bits at byte 28; S_IFMT 0xF000, S_IFREG 0x8000).
// Elsewhere, or where libc lacks statx, the check is skipped.
using System.Runtime.InteropServices;
using TinyLlama.Formats;

namespace TinyLlama.Cli;

internal static class TextFileOption
{
    /// <summary>
    /// The text of <paramref name="path"/>, given as <paramref name="flag"/>; a <see cref="CliException"/>
    /// "--flag: PATH does not exist" or "--flag: PATH: not valid UTF-8 (byte offset N)" otherwise.
    /// </summary>
    public static string Read(string path, string flag)
    {
        RequireFile(path, flag);
        try
        {
            return Utf8Text.ReadFile(path);
        }
        catch (InvalidDataException e)
        {
            throw new CliException($"{flag}: {e.Message}");
        }
    }

    /// <summary>
    /// Throws a one-line <see cref="CliException"/> unless <paramref name="path"/> (given as <paramref name="flag"/>)
    /// is an existing regular file: "is a directory", "does not exist" or "is not a regular file".
    /// </summary>
    public static void RequireFile(string path, string flag)
    {
        if (Directory.Exists(path)) throw new CliException($"{flag}: {path} is a directory; expected a file");
        if (!File.Exists(path)) throw new CliException($"{flag}: {path} does not exist");
        RequireRegular(path, flag);
    }

    /// <summary>Throws unless an existing file <paramref name="path"/> is a regular file (not a FIFO, socket or device).</summary>
    public static void RequireRegular(string path, string flag)
    {
        if (IsSpecialFile(path))
            throw new CliException($"{flag}: {path} is not a regular file (a FIFO, socket or device, which would block or never end); expected a file");
    }

    /// <summary>True when <paramref name="path"/> exists and is neither a regular file nor a directory (Linux; false elsewhere).</summary>
    public static bool IsSpecialFile(string path)
    {
        if (!OperatingSystem.IsLinux()) return false;
        var buffer = new byte[256];                                  // struct statx is 256 bytes
        try
        {
            if (Statx(AtFdCwd, path, 0, StatxType, buffer) != 0) return false;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
        int type = BitConverter.ToUInt16(buffer, 28) & 0xF000;
        return type != 0x8000 && type != 0x4000;                     // S_IFREG, S_IFDIR
    }

    private const int AtFdCwd = -100;
    private const uint StatxType = 1;

    [DllImport("libc.so.6", EntryPoint = "statx", SetLastError = true)]
    private static extern int Statx(int dirfd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, [Out] byte[] buffer);
}
