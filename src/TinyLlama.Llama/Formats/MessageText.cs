// Text taken from a file (a tensor name, a metadata key, a shard name, a vocabulary piece, a JSON value)
// shown inside an error message. Such text may hold anything: a newline or carriage return would split the
// CLI's one-line error in two, other C0/C1 controls (ESC starts a terminal escape sequence) and Unicode's
// bidi controls (U+202E RIGHT-TO-LEFT OVERRIDE, the "Trojan Source" characters, CVE-2021-42574) would make
// the line show something other than what the file holds, and a name of a megabyte would make it unreadable.
// Every format reader passes such text through Quote (or Escape) before it goes into a message:
//   - a backslash becomes \\ (so what follows is unambiguous), \n \r \t stay as those two-character escapes,
//     other characters below U+0100 that are controls become \xNN, and every other character Unicode
//     classes as a control, a format character (Cf: bidi controls, zero-width characters, the BOM), a line
//     or paragraph separator, or a lone surrogate becomes \uXXXX (UnicodeCategory, UAX #9 for the bidi set);
//   - the escaped text is cut at MaxChars characters (never inside an escape or a surrogate pair) and the
//     original length is said: 'model.layers.0.self_a...' (5000 characters).
// Printable text, letters of any script and emoji included, passes unchanged.
using System.Globalization;
using System.Text;

namespace TinyLlama.Formats;

/// <summary>File-supplied text made safe for a one-line error message: controls escaped, length bounded.</summary>
public static class MessageText
{
    /// <summary>Most characters of escaped text a message shows before it cuts the rest.</summary>
    public const int MaxChars = 120;

    /// <summary>
    /// <paramref name="text"/> in single quotes, escaped and bounded as <see cref="Escape"/> does:
    /// "tensor {Quote(name)} is missing" reads "tensor 'a\nb' is missing" for a name holding a newline.
    /// </summary>
    public static string Quote(string? text, int maxChars = MaxChars)
    {
        if (text is null) return "(null)";
        string escaped = EscapeCut(text, maxChars, out bool cut);
        return cut ? $"'{escaped}...' ({text.Length} characters)" : $"'{escaped}'";
    }

    /// <summary>
    /// <paramref name="text"/> with every control, format, separator or lone-surrogate character escaped
    /// (see the file header) and at most <paramref name="maxChars"/> characters kept, then "... (N characters)"
    /// when text was cut.
    /// </summary>
    public static string Escape(string? text, int maxChars = MaxChars)
    {
        if (text is null) return "(null)";
        string escaped = EscapeCut(text, maxChars, out bool cut);
        return cut ? $"{escaped}... ({text.Length} characters)" : escaped;
    }

    // A backslash, or a UTF-16 unit Unicode classes as a control, format character, separator or surrogate
    // (a surrogate is looked at again as half of a pair).
    private static bool NeedsEscape(char c) => c == '\\' || CharUnicodeInfo.GetUnicodeCategory(c) is
        UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator
        or UnicodeCategory.Surrogate;

    private static string EscapeCut(string text, int maxChars, out bool cut)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxChars, 8);
        int i = 0;
        while (i < text.Length && i < maxChars && !NeedsEscape(text[i])) i++;
        if (i == text.Length) { cut = false; return text; }   // the usual case: nothing to escape, short enough
        var sb = new StringBuilder(Math.Min(text.Length, maxChars) + 16);
        sb.Append(text, 0, i);
        for (; i < text.Length; i++)
        {
            char c = text[i];
            string? escape = null;
            int take = 1;
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                // A well-formed pair is one character; a format character above the BMP (the U+E00xx tags) is escaped.
                int scalar = char.ConvertToUtf32(c, text[i + 1]);
                take = 2;
                if (CharUnicodeInfo.GetUnicodeCategory(scalar) == UnicodeCategory.Format) escape = $"\\U{scalar:X8}";
            }
            else if (NeedsEscape(c))
            {
                escape = c switch
                {
                    '\\' => "\\\\",
                    '\n' => "\\n",
                    '\r' => "\\r",
                    '\t' => "\\t",
                    < '\u0100' => $"\\x{(int)c:X2}",
                    _ => $"\\u{(int)c:X4}",
                };
            }
            int width = escape?.Length ?? take;
            if (sb.Length + width > maxChars) { cut = true; return sb.ToString(); }
            if (escape is null) sb.Append(text, i, take);
            else sb.Append(escape);
            i += take - 1;
        }
        cut = false;
        return sb.ToString();
    }
}
