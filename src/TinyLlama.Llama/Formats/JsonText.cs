// The text of a JSON file checked before (or right after) it is parsed: strict UTF-8 (Utf8Text.cs) and no lone
// surrogate escape. RFC 8259 section 7 lets a string spell any UTF-16 code unit as \uXXXX, so "\ud800" (a high
// surrogate with no low one after it) or "\udc00" (a low one with no high one before it) is grammatical JSON but
// not Unicode text (section 8.2 calls such strings unpredictable). System.Text.Json parses them and only fails
// when the string is read, with an InvalidOperationException from deep inside whichever reader touches it.
// Checking the bytes first makes every such file one error naming the file and the line, the same for
// config.json, tokenizer.json, adapter_config.json, index files, safetensors headers and training data.
// Also here: parser errors as one bounded line (System.Text.Json quotes the rest of a string literal, newlines
// included).
namespace TinyLlama.Formats;

/// <summary>Checks on the bytes of a JSON document beyond what the parser checks.</summary>
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
        CheckEscapes(bytes, source);
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

    /// <summary>
    /// Throws a one-line <see cref="InvalidDataException"/> "SOURCE: line N: ..." when <paramref name="json"/>
    /// holds a lone surrogate escape (see <see cref="FindLoneSurrogateEscape"/>).
    /// </summary>
    public static void CheckEscapes(ReadOnlySpan<byte> json, string source)
    {
        int at = FindLoneSurrogateEscape(json);
        if (at < 0) return;
        string escape = System.Text.Encoding.ASCII.GetString(json.Slice(at, Math.Min(6, json.Length - at)));
        throw new InvalidDataException($"{source}: line {LineAt(json, at)}: a string holds the escape {escape} (byte offset {at}), a lone UTF-16 surrogate (half of a pair without the other), which is not text");
    }

    /// <summary>
    /// The byte offset of the first \u escape inside a string of <paramref name="json"/> that is a surrogate not
    /// paired as UTF-16 requires (high then low), or -1 when there is none. Backslashes outside strings are the
    /// parser's error to report.
    /// </summary>
    public static int FindLoneSurrogateEscape(ReadOnlySpan<byte> json)
    {
        bool inString = false;
        for (int i = 0; i < json.Length; i++)
        {
            byte b = json[i];
            if (!inString) { inString = b == (byte)'"'; continue; }
            if (b == (byte)'"') { inString = false; continue; }
            if (b != (byte)'\\') continue;
            if (i + 1 < json.Length && json[i + 1] != (byte)'u') { i++; continue; }  // \" \\ \n ...
            int unit = Hex4(json, i + 2);
            if (unit < 0) { i++; continue; }                                         // not JSON: the parser's error to report
            if (unit is >= 0xDC00 and <= 0xDFFF) return i;                           // a low surrogate with no high one before it
            if (unit is >= 0xD800 and <= 0xDBFF)
            {
                bool paired = i + 11 < json.Length && json[i + 6] == (byte)'\\' && json[i + 7] == (byte)'u'
                    && Hex4(json, i + 8) is >= 0xDC00 and <= 0xDFFF;
                if (!paired) return i;
                i += 11;                                                             // both escapes
                continue;
            }
            i += 5;
        }
        return -1;
    }

    /// <summary>
    /// A parser error as one bounded line: System.Text.Json quotes the rest of the text after an invalid
    /// literal when it parses a string (a whole tokenizer.json, newlines included); the middle is cut.
    /// </summary>
    public static string Describe(System.Text.Json.JsonException e)
    {
        string m = e.Message.ReplaceLineEndings(" ");
        return m.Length <= 300 ? m : string.Concat(m.AsSpan(0, 150), " ... ", m.AsSpan(m.Length - 120));
    }

    // The value of 4 hex digits at json[at..at+4], or -1.
    private static int Hex4(ReadOnlySpan<byte> json, int at)
    {
        if (at + 4 > json.Length) return -1;
        int v = 0;
        for (int k = 0; k < 4; k++)
        {
            int d = HexDigit(json[at + k]);
            if (d < 0) return -1;
            v = v * 16 + d;
        }
        return v;
    }

    private static int HexDigit(byte c) => c switch
    {
        >= (byte)'0' and <= (byte)'9' => c - '0',
        >= (byte)'a' and <= (byte)'f' => c - 'a' + 10,
        >= (byte)'A' and <= (byte)'F' => c - 'A' + 10,
        _ => -1,
    };

    private static int LineAt(ReadOnlySpan<byte> bytes, int offset) => bytes[..offset].Count((byte)'\n') + 1;
}
