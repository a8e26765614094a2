// Strict UTF-8 for the text files a user gives (text to score, calibration text, token-id files, JSON Lines
// to tokenize, SFT data): an invalid byte sequence is an error naming the file and the byte offset of the
// first bad sequence, never a silent U+FFFD. Encoding.UTF8 and File.ReadAllText replace bad bytes, so a
// file in Latin-1 or a truncated multi-byte character would otherwise be scored or trained on as garbage.
//
// Validity is Unicode's (chapter 3, D92 / Table 3-7, "well-formed UTF-8 byte sequences"), as
// System.Text.Unicode.Utf8 implements it: no overlong forms, no surrogates, nothing above U+10FFFF.
// A leading byte order mark (EF BB BF) is skipped, as File.ReadAllText does.
using System.Buffers;
using System.Text.Unicode;

namespace TinyLlama.Formats;

/// <summary>Reads and checks UTF-8 text strictly (an invalid byte is an error with its offset).</summary>
public static class Utf8Text
{
    /// <summary>
    /// The byte offset of the first byte of the first invalid UTF-8 sequence in <paramref name="bytes"/>,
    /// or -1 when all of it is valid. A sequence cut off by the end of the span is invalid.
    /// </summary>
    public static int FindInvalid(ReadOnlySpan<byte> bytes)
    {
        if (Utf8.IsValid(bytes)) return -1;
        Span<char> chars = stackalloc char[512];
        int at = 0;
        while (true)
        {
            // The chunk decodes until its output is full (DestinationTooSmall) or the first bad sequence.
            var status = Utf8.ToUtf16(bytes[at..], chars, out int read, out _, replaceInvalidSequences: false);
            at += read;
            if (status != OperationStatus.DestinationTooSmall) return status == OperationStatus.Done ? -1 : at;
        }
    }

    /// <summary>
    /// <paramref name="bytes"/> as a string (a leading byte order mark dropped); an
    /// <see cref="InvalidDataException"/> "<paramref name="source"/>: not valid UTF-8 (byte offset N)" otherwise.
    /// </summary>
    public static string Decode(ReadOnlySpan<byte> bytes, string source)
    {
        int skip = bytes.StartsWith("\uFEFF"u8) ? 3 : 0;
        int bad = FindInvalid(bytes[skip..]);
        if (bad >= 0) throw new InvalidDataException($"{source}: not valid UTF-8 (byte offset {skip + bad})");
        return System.Text.Encoding.UTF8.GetString(bytes[skip..]);
    }

    /// <summary>The text of the file at <paramref name="path"/>, decoded strictly (see <see cref="Decode"/>).</summary>
    public static string ReadFile(string path) => Decode(File.ReadAllBytes(path), path);
}
