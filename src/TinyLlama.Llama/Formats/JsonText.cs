// The text of a JSON file checked before it is parsed: strict UTF-8 (Utf8Text.cs) and no lone surrogate
// escape. RFC 8259 section 7 lets a string spell any code unit as \uXXXX, so "\ud800" is grammatical JSON,
// but a high surrogate (D800-DBFF) not followed by a low one (DC00-DFFF), or a low one alone, is no text:
// System.Text.Json parses it and only fails when the string is read, with an InvalidOperationException from
// deep inside whichever reader touches it. Checking the bytes first makes every such file one error naming
// the file and the line, the same for config.json, tokenizer.json, adapter_config.json, index files and
// safetensors headers. The scan does not parse: it follows backslash escapes only, which is enough, since
// outside strings a backslash is already a syntax error the parser reports.
namespace TinyLlama.Formats;

/// <summary>Checks the bytes of a JSON document for invalid UTF-8 and lone surrogate escapes.</summary>
public static class JsonText
{
    /// <summary>
    /// Throws an <see cref="InvalidDataException"/> "SOURCE: line N: ..." when <paramref name="bytes"/> are not
    /// valid UTF-8 or hold a lone surrogate escape; <paramref name="source"/> names the file.
    /// </summary>
    public static void Check(ReadOnlySpan<byte> bytes, string source)
    {
        int bad = Utf8Text.FindInvalid(bytes);
        if (bad >= 0) throw new InvalidDataException($"{source}: line {LineAt(bytes, bad)}: not valid UTF-8 (byte offset {bad})");
        for (int i = 0; i < bytes.Length; i++)
        {
            if (bytes[i] != '\\') continue;
            if (i + 1 < bytes.Length && bytes[i + 1] == 'u' && Hex4(bytes, i + 2) is int unit)
            {
                bool high = unit is >= 0xD800 and <= 0xDBFF, low = unit is >= 0xDC00 and <= 0xDFFF;
                if (high && i + 7 < bytes.Length && bytes[i + 6] == '\\' && bytes[i + 7] == 'u' && Hex4(bytes, i + 8) is >= 0xDC00 and <= 0xDFFF)
                    i += 6; // a pair: skip the high half here, the low half below
                else if (high || low)
                    throw new InvalidDataException($"{source}: line {LineAt(bytes, i)}: a string holds the lone surrogate escape \\u{unit:x4} (a {(high ? "high" : "low")} half without its pair), which is not text");
                i += 5;
            }
            else i++; // \" \\ \/ \b \f \n \r \t (anything else is the parser's error)
        }
    }

    /// <summary>The text of the file at <paramref name="path"/>, checked (see <see cref="Check"/>; a leading byte order mark is dropped).</summary>
    public static string ReadFile(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        Check(bytes, path);
        return Utf8Text.Decode(bytes, path);
    }

    /// <summary>The bytes of the file at <paramref name="path"/>, checked (see <see cref="Check"/>).</summary>
    public static byte[] ReadBytes(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        Check(bytes, path);
        return bytes;
    }

    private static int? Hex4(ReadOnlySpan<byte> bytes, int at)
    {
        if (at + 4 > bytes.Length) return null;
        int value = 0;
        for (int k = at; k < at + 4; k++)
        {
            int d = bytes[k] switch
            {
                >= (byte)'0' and <= (byte)'9' => bytes[k] - '0',
                >= (byte)'a' and <= (byte)'f' => bytes[k] - 'a' + 10,
                >= (byte)'A' and <= (byte)'F' => bytes[k] - 'A' + 10,
                _ => -1,
            };
            if (d < 0) return null;
            value = value * 16 + d;
        }
        return value;
    }

    private static int LineAt(ReadOnlySpan<byte> bytes, int offset) => bytes[..offset].Count((byte)'\n') + 1;
}
