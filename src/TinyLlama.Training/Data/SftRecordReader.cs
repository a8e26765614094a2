// Reads the records of an SFT data file, JSON array or JSON Lines, remembering the line each record
// starts on, and reports every problem as one line "file:line: what is wrong" so a person can open the
// file at that line. Formats: RFC 8259 JSON (a top-level array of objects) and JSON Lines
// (jsonlines.org: one object per line; blank lines are skipped). A UTF-8 byte order mark is allowed.
//
// Positions: for JSON Lines the line is the file line; for an array we walk it with Utf8JsonReader and
// turn each element's byte offset (TokenStartIndex) into a line by counting '\n's, then parse the
// element with JsonDocument.ParseValue. Malformed JSON reports the line from JsonException.LineNumber
// (0-based, counted by the reader from the start of the buffer, so it is the file line).
// A byte that is not valid UTF-8 is reported with its line and byte offset before any JSON is parsed.
using System.Text.Json;
using TinyLlama.Formats;

namespace TinyLlama.Training.Data;

/// <summary>
/// Builds the errors of SFT data loading: an <see cref="InvalidDataException"/> (sealed, so not
/// subclassed) whose message is one line, <c>"file:line: field "x" ..."</c>, naming the file, the line
/// where the record starts (JSON Lines: its line) and the field. The same facts are in
/// <see cref="Exception.Data"/> under "File", "Line" (int, 0 when not on a line) and "Field" (may be null),
/// for callers that want them apart.
/// </summary>
public static class SftDataError
{
    /// <summary>Key of the data file in <see cref="Exception.Data"/>.</summary>
    public const string FileKey = "File";
    /// <summary>Key of the 1-based line in <see cref="Exception.Data"/>.</summary>
    public const string LineKey = "Line";
    /// <summary>Key of the field (e.g. <c>"conversations[2].from"</c>) in <see cref="Exception.Data"/>.</summary>
    public const string FieldKey = "Field";

    /// <summary>An error with a full one-line <paramref name="message"/> and its parts recorded.</summary>
    public static InvalidDataException Create(string file, int line, string? field, string message)
    {
        var e = new InvalidDataException(message);
        e.Data[FileKey] = file;
        e.Data[LineKey] = line;
        e.Data[FieldKey] = field;
        return e;
    }

    /// <summary><c>"file:line: field "x" problem"</c> (the line part left out when 0, the field part when null).</summary>
    public static InvalidDataException At(string file, int line, string? field, string problem)
    {
        string where = line > 0 ? $"{file}:{line}" : file;
        string what = field is null ? problem : $"field \"{field}\" {problem}";
        return Create(file, line, field, $"{where}: {what}");
    }
}

/// <summary>One record's position, for error messages and <see cref="SftExample.Source"/>.</summary>
internal readonly record struct RecordContext(string File, int Line)
{
    public string Source => $"{File}:{Line}";

    public InvalidDataException Error(string? field, string problem) => SftDataError.At(File, Line, field, problem);

    /// <summary>A required string property of <paramref name="obj"/>.</summary>
    public string RequireString(JsonElement obj, string name, string? fieldPath = null)
    {
        if (!obj.TryGetProperty(name, out var value)) throw Error(fieldPath ?? name, "is missing");
        return AsString(value, fieldPath ?? name);
    }

    /// <summary>An optional string property: null when absent or JSON null.</summary>
    public string? OptionalString(JsonElement obj, string name, string? fieldPath = null)
    {
        if (!obj.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        return AsString(value, fieldPath ?? name);
    }

    public string AsString(JsonElement value, string field) =>
        value.ValueKind == JsonValueKind.String ? value.GetString()! : throw Error(field, $"must be a string, not {Describe(value.ValueKind)}");

    /// <summary>The optional top-level <c>"quality"</c> field of conditional training.</summary>
    public SftQuality Quality(JsonElement record)
    {
        string? text = OptionalString(record, "quality");
        if (text is null) return SftQuality.Unrated;
        return QualityTags.Parse(text) ?? throw Error("quality", $"must be \"good\" or \"bad\", not \"{MessageText.Escape(text)}\"");
    }

    public static string Describe(JsonValueKind kind) => kind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Null => "null",
        _ => kind.ToString(),
    };
}

/// <summary>Walks the records of a JSON array or JSON Lines file.</summary>
internal static class SftRecordReader
{
    /// <summary>Reads the file at <paramref name="path"/> and visits its records (<see cref="ForEach(byte[], string, Action{JsonElement, RecordContext})"/>); a missing file is one line "path: does not exist".</summary>
    public static void ForEachInFile(string path, Action<JsonElement, RecordContext> visit)
    {
        byte[] content;
        try { content = File.ReadAllBytes(path); }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException) { throw SftDataError.At(path, 0, null, "does not exist"); }
        ForEach(content, path, visit);
    }

    /// <summary>Calls <paramref name="visit"/> with each record (a JSON object) and its position, in file order.</summary>
    public static void ForEach(byte[] content, string file, Action<JsonElement, RecordContext> visit)
    {
        var text = content.AsSpan();
        int start = text.StartsWith("\uFEFF"u8) ? 3 : 0;
        // JSON text is UTF-8 (RFC 8259 section 8.1); System.Text.Json would only notice a bad byte when a
        // string is read, as an InvalidOperationException, so the whole file is checked first.
        int bad = Utf8Text.FindInvalid(text[start..]);
        if (bad >= 0)
            throw SftDataError.At(file, text[..(start + bad)].Count((byte)'\n') + 1, null, $"not valid UTF-8 (byte offset {start + bad})");
        // Nor is a string escape that decodes to a lone surrogate ("\ud800") text; GetString would throw.
        int escape = JsonText.FindLoneSurrogateEscape(text[start..]);
        if (escape >= 0)
            throw SftDataError.At(file, text[..(start + escape)].Count((byte)'\n') + 1, null, $"a string holds the escape {System.Text.Encoding.ASCII.GetString(text.Slice(start + escape, 6))}, a lone UTF-16 surrogate that is not a character");
        int first = start;
        while (first < text.Length && text[first] is (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n') first++;
        if (first == text.Length) throw SftDataError.At(file, 0, null, "the file holds no records");
        if (text[first] == (byte)'[') ForEachInArray(content, start, file, visit);
        else ForEachLine(content, start, file, visit);
    }

    private static void ForEachLine(byte[] content, int start, string file, Action<JsonElement, RecordContext> visit)
    {
        int line = 0, records = 0;
        for (int pos = start; pos < content.Length;)
        {
            int end = Array.IndexOf(content, (byte)'\n', pos);
            if (end < 0) end = content.Length;
            line++;
            var bytes = content.AsMemory(pos, end - pos);
            pos = end + 1;
            if (bytes.Span.Trim(" \t\r"u8).IsEmpty) continue;
            var ctx = new RecordContext(file, line);
            JsonDocument doc;
            try { doc = JsonDocument.Parse(bytes); }
            catch (JsonException e) { throw Malformed(file, line, e); }
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                    throw ctx.Error(null, $"a record must be a JSON object, not {RecordContext.Describe(doc.RootElement.ValueKind)}");
                visit(doc.RootElement, ctx);
            }
            records++;
        }
        if (records == 0) throw SftDataError.At(file, 0, null, "the file holds no records");
    }

    private static void ForEachInArray(byte[] content, int start, string file, Action<JsonElement, RecordContext> visit)
    {
        var reader = new Utf8JsonReader(content.AsSpan(start)); // strict RFC 8259, as JsonDocument.Parse is for JSON Lines
        // Incremental byte offset -> line: offsets only grow, so count the newlines since the last one.
        int lineAtOffset = 1, countedTo = 0;
        int LineOf(long offset)
        {
            lineAtOffset += content.AsSpan(start + countedTo, (int)offset - countedTo).Count((byte)'\n');
            countedTo = (int)offset;
            return lineAtOffset;
        }
        try
        {
            reader.Read(); // '[' (checked by the caller)
            while (true)
            {
                if (!reader.Read()) throw SftDataError.At(file, LineOf(reader.BytesConsumed), null, "malformed JSON: the array is not closed");
                if (reader.TokenType == JsonTokenType.EndArray) break;
                var ctx = new RecordContext(file, LineOf(reader.TokenStartIndex));
                if (reader.TokenType != JsonTokenType.StartObject)
                    throw ctx.Error(null, $"a record must be a JSON object, not {Describe(reader.TokenType)}");
                using var doc = JsonDocument.ParseValue(ref reader);
                visit(doc.RootElement, ctx);
            }
            if (reader.Read()) throw SftDataError.At(file, LineOf(reader.TokenStartIndex), null, "malformed JSON: text after the closing ']'");
        }
        catch (JsonException e)
        {
            throw Malformed(file, (int)(e.LineNumber ?? 0) + 1, e);
        }
    }

    private static InvalidDataException Malformed(string file, int line, JsonException e)
    {
        // JsonException's message ends with " Path: ... | LineNumber: ... | BytePositionInLine: ...";
        // keep the reason, and say the column ourselves (1-based).
        string reason = JsonText.Describe(e);   // one line: the parser may quote text holding newlines
        int cut = reason.IndexOf(" Path:", StringComparison.Ordinal);
        if (cut < 0) cut = reason.IndexOf(" LineNumber:", StringComparison.Ordinal);
        if (cut > 0) reason = reason[..cut];
        string column = e.BytePositionInLine is long c ? $" (column {c + 1})" : "";
        return SftDataError.At(file, line, null, $"malformed JSON{column}: {reason.TrimEnd('.')}");
    }

    private static string Describe(JsonTokenType token) => token switch
    {
        JsonTokenType.StartArray => "an array",
        JsonTokenType.String => "a string",
        JsonTokenType.Number => "a number",
        JsonTokenType.True or JsonTokenType.False => "a boolean",
        JsonTokenType.Null => "null",
        _ => token.ToString(),
    };
}
