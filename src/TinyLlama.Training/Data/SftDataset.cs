// Loading SFT data (the CLI's --format alpaca|sharegpt|auto) and the train/validation split.
//
// Record formats (a JSON array of records, or JSON Lines with one record per line):
//   alpaca   {"instruction": str, "input": str (optional, may be "" or null), "output": str,
//             "quality": "good"|"bad" (optional)}                          -> AlpacaTemplate
//   sharegpt {"conversations": [{"from": "human"|"user"|"gpt"|"assistant"|"system", "value": str}, ...],
//             "system": str (optional), "quality": "good"|"bad" (optional)} -> VicunaTemplate
//            ("role"/"content" are accepted in place of "from"/"value", as in OpenAI-style exports)
//   auto     each record by its fields: "conversations" -> sharegpt, "instruction" -> alpaca.
// "quality" is Koala-style conditional training (QualityTags).
//
// Conversation rules follow FastChat's train.py: turns before the first user turn that are not system
// turns are skipped (ShareGPT dumps often start with a greeting by the model), then turns must
// alternate user/assistant; a final unanswered user turn is ignored; a system turn is only allowed
// before the conversation starts and replaces the default system line.
//
// Every data error is an InvalidDataException whose message is one line naming file, line and field.
using System.Text.Json;
using TinyLlama.Formats;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;

namespace TinyLlama.Training.Data;

/// <summary>How the records of a data file are laid out (the CLI's <c>--format</c>).</summary>
public enum SftFormat
{
    /// <summary>Each record by its fields: <c>"conversations"</c> means ShareGPT, <c>"instruction"</c> Alpaca.</summary>
    Auto,
    /// <summary>Alpaca: <c>{instruction, input, output}</c> with the Alpaca prompt template.</summary>
    Alpaca,
    /// <summary>ShareGPT / Vicuna: <c>{conversations: [{from, value}, ...]}</c> with the Vicuna v1.1 template.</summary>
    ShareGpt,
}

/// <summary>A loaded, tokenised SFT data file and what loading did to it.</summary>
public sealed class SftDataset
{
    /// <summary>The data file as given.</summary>
    public string Path { get; }

    /// <summary>The format it was read as.</summary>
    public SftFormat Format { get; }

    /// <summary>The maximum sequence length examples were cut to.</summary>
    public int MaxLength { get; }

    /// <summary>Training examples in file order (a split conversation's pieces are consecutive).</summary>
    public IReadOnlyList<SftExample> Examples { get; }

    /// <summary>Records read from the file.</summary>
    public int RecordCount { get; }

    /// <summary>Examples that were longer than <see cref="MaxLength"/> and were cut (their end is lost).</summary>
    public int TruncatedCount { get; }

    /// <summary>Extra examples made by splitting long conversations at exchange boundaries.</summary>
    public int SplitCount { get; }

    /// <summary>Records or conversation pieces dropped because no target token was left (e.g. the prompt alone fills MaxLength).</summary>
    public int DroppedCount { get; }

    private SftDataset(string path, SftFormat format, int maxLength, List<SftExample> examples, int records, SftLoadCounters counters)
    {
        Path = path;
        Format = format;
        MaxLength = maxLength;
        Examples = examples;
        RecordCount = records;
        TruncatedCount = counters.Truncated;
        SplitCount = counters.Split;
        DroppedCount = counters.Dropped;
    }

    /// <summary>One line for the log, e.g. <c>"data.json: 52002 records -> 52002 examples (12 truncated to 512 tokens)"</c>.</summary>
    public string Summary()
    {
        var notes = new List<string>();
        if (TruncatedCount > 0) notes.Add($"{TruncatedCount} truncated to {MaxLength} tokens");
        if (SplitCount > 0) notes.Add($"{SplitCount} extra from splitting long conversations");
        if (DroppedCount > 0) notes.Add($"{DroppedCount} dropped with no target token");
        return $"{Path}: {RecordCount} records -> {Examples.Count} examples" + (notes.Count > 0 ? " (" + string.Join(", ", notes) + ")" : "");
    }

    /// <summary>Parses a <c>--format</c> value: <c>alpaca</c>, <c>sharegpt</c> (or <c>vicuna</c>), <c>auto</c>; case-insensitive.</summary>
    public static bool TryParseFormat(string name, out SftFormat format)
    {
        switch (name?.Trim().ToLowerInvariant())
        {
            case "alpaca": format = SftFormat.Alpaca; return true;
            case "sharegpt" or "vicuna": format = SftFormat.ShareGpt; return true;
            case "auto": format = SftFormat.Auto; return true;
            default: format = SftFormat.Auto; return false;
        }
    }

    /// <summary>
    /// Loads and tokenises a data file; <paramref name="format"/> is the CLI's <c>--format</c> text.
    /// </summary>
    /// <exception cref="InvalidDataException">Unknown format, or any problem in the file (message: "file:line: field ...").</exception>
    public static SftDataset Load(string path, string format, LlamaTokenizer tokenizer, int maxLength, string? defaultSystem = null)
    {
        if (!TryParseFormat(format, out var parsed))
            throw SftDataError.Create(path, 0, "format", $"{path}: unknown data format \"{format}\" (--format must be alpaca, sharegpt or auto)");
        return Load(path, parsed, tokenizer, maxLength, defaultSystem);
    }

    /// <summary>
    /// Loads and tokenises a data file. Examples longer than <paramref name="maxLength"/> tokens are cut
    /// (long conversations are first split at exchange boundaries); see the counts on the result.
    /// <paramref name="defaultSystem"/> replaces Vicuna's default system line for conversations without one.
    /// </summary>
    /// <exception cref="FileNotFoundException">No file at <paramref name="path"/>.</exception>
    /// <exception cref="InvalidDataException">A problem in the file (message: "file:line: field ...").</exception>
    public static SftDataset Load(string path, SftFormat format, LlamaTokenizer tokenizer, int maxLength, string? defaultSystem = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"SFT data file not found: {path}", path);
        return Parse(File.ReadAllBytes(path), path, format, TextEncoder.From(tokenizer), maxLength, defaultSystem);
    }

    /// <summary>Parses file content; <paramref name="path"/> names it in messages and sources.</summary>
    internal static SftDataset Parse(byte[] content, string path, SftFormat format, TextEncoder encoder, int maxLength, string? defaultSystem = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 2);
        var examples = new List<SftExample>();
        var counters = new SftLoadCounters();
        int records = 0;
        SftRecordReader.ForEach(content, path, (record, ctx) =>
        {
            records++;
            var recordFormat = format == SftFormat.Auto ? Detect(record, ctx) : format;
            if (recordFormat == SftFormat.Alpaca)
            {
                var example = ReadAlpaca(record, ctx, encoder);
                if (example.Length > maxLength) { example = example.Truncate(maxLength); counters.Truncated++; }
                if (example.TargetCount == 0) counters.Dropped++;
                else examples.Add(example);
            }
            else
            {
                var (turns, system, quality) = ReadConversation(record, ctx);
                examples.AddRange(VicunaTemplate.Tokenize(encoder, turns, maxLength, system ?? defaultSystem, quality, ctx.Source, counters));
            }
        });
        return new SftDataset(path, format, maxLength, examples, records, counters);
    }

    private static SftFormat Detect(JsonElement record, RecordContext ctx)
    {
        if (record.TryGetProperty("conversations", out _)) return SftFormat.ShareGpt;
        if (record.TryGetProperty("instruction", out _)) return SftFormat.Alpaca;
        throw ctx.Error(null, "the record has neither field \"instruction\" (alpaca) nor field \"conversations\" (sharegpt)");
    }

    private static SftExample ReadAlpaca(JsonElement record, RecordContext ctx, TextEncoder encoder)
    {
        if (!record.TryGetProperty("instruction", out _) && record.TryGetProperty("conversations", out _))
            throw ctx.Error("instruction", "is missing (the record has \"conversations\": use --format sharegpt)");
        string instruction = ctx.RequireString(record, "instruction");
        string? input = ctx.OptionalString(record, "input");
        string output = ctx.RequireString(record, "output");
        return AlpacaTemplate.Tokenize(encoder, instruction, input, output, ctx.Quality(record), ctx.Source);
    }

    private static (List<ChatMessage> Turns, string? System, SftQuality Quality) ReadConversation(JsonElement record, RecordContext ctx)
    {
        if (!record.TryGetProperty("conversations", out var conversation))
            throw ctx.Error("conversations", record.TryGetProperty("instruction", out _)
                ? "is missing (the record has \"instruction\": use --format alpaca)"
                : "is missing");
        if (conversation.ValueKind != JsonValueKind.Array)
            throw ctx.Error("conversations", $"must be an array, not {RecordContext.Describe(conversation.ValueKind)}");
        string? system = ctx.OptionalString(record, "system");
        var turns = new List<ChatMessage>();
        int index = -1;
        foreach (var turn in conversation.EnumerateArray())
        {
            index++;
            string at = $"conversations[{index}]";
            if (turn.ValueKind != JsonValueKind.Object)
                throw ctx.Error(at, $"must be an object, not {RecordContext.Describe(turn.ValueKind)}");
            string roleKey = turn.TryGetProperty("from", out _) || !turn.TryGetProperty("role", out _) ? "from" : "role";
            string contentKey = turn.TryGetProperty("value", out _) || !turn.TryGetProperty("content", out _) ? "value" : "content";
            string roleName = ctx.RequireString(turn, roleKey, $"{at}.{roleKey}");
            string content = ctx.RequireString(turn, contentKey, $"{at}.{contentKey}");
            var role = ParseRole(roleName) ?? throw ctx.Error($"{at}.{roleKey}",
                $"has unknown role \"{MessageText.Escape(roleName)}\" (expected human, user, gpt, assistant or system)");

            if (role == ChatRole.System)
            {
                if (turns.Count > 0) throw ctx.Error($"{at}.{roleKey}", "is a system turn after the conversation started (only the first turns may be system turns)");
                system = content;
                continue;
            }
            if (turns.Count == 0 && role == ChatRole.Assistant) continue; // FastChat skips a leading model turn
            var expected = turns.Count % 2 == 0 ? ChatRole.User : ChatRole.Assistant;
            if (role != expected)
                throw ctx.Error($"{at}.{roleKey}", $"is \"{MessageText.Escape(roleName)}\" but {(expected == ChatRole.User ? "a user" : "an assistant")} turn was expected (turns must alternate)");
            turns.Add(new ChatMessage(role, content));
        }
        if (turns.Count % 2 == 1) turns.RemoveAt(turns.Count - 1); // an unanswered last question teaches nothing
        return (turns, system, ctx.Quality(record));
    }

    private static ChatRole? ParseRole(string name) => name.ToLowerInvariant() switch
    {
        "human" or "user" => ChatRole.User,
        "gpt" or "assistant" => ChatRole.Assistant,
        "system" => ChatRole.System,
        _ => null,
    };

    // ---------------------------------------------------------------- validation split

    /// <summary>
    /// Splits examples into (train, validation) deterministically for a seed: a random
    /// <paramref name="fraction"/> (in [0, 1)) of the records goes to validation, at least one when the
    /// fraction is positive. See <see cref="SplitValidation(IReadOnlyList{SftExample}, int, ulong)"/>.
    /// </summary>
    public static (IReadOnlyList<SftExample> Train, IReadOnlyList<SftExample> Validation) SplitValidation(
        IReadOnlyList<SftExample> examples, double fraction, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (!(fraction >= 0 && fraction < 1)) throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "validation fraction must be in [0, 1)");
        int records = GroupBySource(examples).Count;
        int count = (int)Math.Round(fraction * records, MidpointRounding.AwayFromZero);
        if (fraction > 0 && count == 0) count = 1;
        return SplitValidation(examples, Math.Min(count, Math.Max(records - 1, 0)), seed);
    }

    /// <summary>
    /// Splits examples into (train, validation) deterministically for a seed: <paramref name="count"/>
    /// records, chosen by a seeded shuffle, go to validation. A record is a <see cref="SftExample.Source"/>:
    /// the pieces of a split conversation (and copies made by a mixture) share it and stay on one side,
    /// so nothing the model trains on leaks into validation. Both lists keep the input order. Split
    /// before mixing, so validation measures the real data.
    /// </summary>
    public static (IReadOnlyList<SftExample> Train, IReadOnlyList<SftExample> Validation) SplitValidation(
        IReadOnlyList<SftExample> examples, int count, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(examples);
        var groups = GroupBySource(examples);
        if (count < 0 || (count > 0 && count >= groups.Count))
            throw new ArgumentOutOfRangeException(nameof(count), count, $"validation count must leave at least one of the {groups.Count} records for training");
        var inValidation = new HashSet<string>(StringComparer.Ordinal);
        int[] order = Shuffling.Permutation(groups.Count, new Generator(seed));
        for (int i = 0; i < count; i++) inValidation.Add(groups[order[i]]);
        var train = new List<SftExample>();
        var validation = new List<SftExample>();
        foreach (var e in examples) (inValidation.Contains(e.Source) ? validation : train).Add(e);
        return (train, validation);
    }

    // Distinct sources in order of first appearance.
    private static List<string> GroupBySource(IReadOnlyList<SftExample> examples)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var groups = new List<string>();
        foreach (var e in examples) if (seen.Add(e.Source)) groups.Add(e.Source);
        return groups;
    }
}
