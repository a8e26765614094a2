// JSON string escapes that decode to no character: RFC 8259 (section 7) lets a string spell any UTF-16
// code unit as \uXXXX, so "\ud800" (a high surrogate with no low one after it) or "\udc00" (a low one
// with no high one before it) is well-formed JSON but not Unicode text (RFC 8259 section 8.2 calls such
// strings unpredictable). System.Text.Json parses them and then throws InvalidOperationException from
// JsonElement.GetString, a stack trace for the user. Every reader of a JSON file runs this scan once after
// parsing, so a file with such an escape is one InvalidDataException naming the file and the byte offset.
// Strict UTF-8 of the raw bytes is Utf8Text's check; this one covers what escapes can still smuggle in.
namespace TinyLlama.Formats;

/// <summary>Checks on JSON text beyond what the parser checks.</summary>
public static class JsonText
{
    /// <summary>
    /// The byte offset of the first \u escape inside a string of <paramref name="json"/> (well-formed JSON)
    /// that is a surrogate not paired as UTF-16 requires (high then low), or -1 when there is none.
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
    /// Throws a one-line <see cref="InvalidDataException"/> "<paramref name="source"/>: ..." when
    /// <paramref name="json"/> holds a lone surrogate escape (see <see cref="FindLoneSurrogateEscape"/>).
    /// </summary>
    public static void CheckEscapes(ReadOnlySpan<byte> json, string source)
    {
        int at = FindLoneSurrogateEscape(json);
        if (at >= 0)
            throw new InvalidDataException($"{source}: a string holds the escape {System.Text.Encoding.ASCII.GetString(json.Slice(at, Math.Min(6, json.Length - at)))} at byte offset {at}, a lone UTF-16 surrogate that is not a character");
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
}
