// The text files a user names on the command line (perplexity --file and --ids-file, quantize --calib,
// tokenize --jsonl) are read here, strictly as UTF-8 (Formats/Utf8Text.cs): a missing file or an invalid
// byte is one line naming the flag, the file and the byte offset, never text with U+FFFD in it.
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
        if (!File.Exists(path)) throw new CliException($"{flag}: {path} does not exist");
        try
        {
            return Utf8Text.ReadFile(path);
        }
        catch (InvalidDataException e)
        {
            throw new CliException($"{flag}: {e.Message}");
        }
    }
}
