// Reads a Hugging Face tokenizer.json (the `tokenizers` library's serialization) when it describes
// Llama-style BPE: model.type "BPE" with byte_fallback, whitespace turned into '▁' either by the
// normalizer Sequence [Prepend("▁"), Replace(" ", "▁")] (Llama 2's file) or by a Metaspace
// pre-tokenizer (newer conversions). Field meanings follow tokenizers/src/models/bpe/serialization.rs,
// normalizers/{prepend,replace}.rs and pre_tokenizers/metaspace.rs.
//
// What this reader keeps from Hugging Face and what it takes from SentencePiece:
//   - merges are ranked by their position in model.merges (both the "a b" and the ["a", "b"] form);
//   - added_tokens marked special become control pieces: like SentencePiece (and unlike the
//     `tokenizers` library) the text "</s>" is encoded as characters, never as the EOS id; added
//     tokens not marked special become user-defined pieces, matched whole in the normalised text;
//   - BOS/EOS are the pieces "<s>" and "</s>" when the vocabulary has them;
//   - decoding follows SentencePiece (LlamaTokenizer.Decode), which for Llama agrees with the
//     file's decoder [Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)] on valid text.
// Anything else (another model type, Unicode normalizers, byte-level pre-tokenizers, dropout)
// is rejected with an InvalidDataException naming the file.
using System.Text.Json;
using TinyLlama.Formats;

namespace TinyLlama.Tokenizers;

internal static class HuggingFaceTokenizerJson
{
    public static LlamaTokenizer Parse(string json, string source)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 256 });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON: {TinyLlama.Formats.JsonText.Describe(e)}", e);
        }
        using (doc)
        {
            try
            {
                return Build(doc.RootElement, source);
            }
            catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException or FormatException or ArgumentException)
            {
                // Wrong JSON kinds (a number where a string belongs, ...) and vocabulary errors.
                throw new InvalidDataException(e.Message.StartsWith(source, StringComparison.Ordinal) ? e.Message : $"{source}: {e.Message}", e);
            }
        }
    }

    private static InvalidDataException Bad(string source, string problem) => new($"{source}: {problem}");

    private static LlamaTokenizer Build(JsonElement root, string source)
    {
        if (root.ValueKind != JsonValueKind.Object) throw Bad(source, "the top level is not a JSON object");
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw Bad(source, "no \"model\" object");
        string type = model.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "BPE";
        if (type != "BPE") throw Bad(source, $"model type is {MessageText.Quote(type)}; only BPE is supported");
        if (model.TryGetProperty("dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() > 0)
            throw Bad(source, "BPE dropout is not supported");
        foreach (var name in (string[])["continuing_subword_prefix", "end_of_word_suffix"])
            if (model.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String && v.GetString()!.Length > 0)
                throw Bad(source, $"model.{name} is not supported");
        bool byteFallback = GetBool(model, "byte_fallback", false);
        bool fuseUnk = GetBool(model, "fuse_unk", false);

        // The vocabulary: model.vocab plus added_tokens (which may repeat vocab entries or extend them).
        if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
            throw Bad(source, "no model.vocab object");
        var byId = new Dictionary<int, string>();
        foreach (var entry in vocab.EnumerateObject())
        {
            int id = entry.Value.GetInt32();
            if (id < 0) throw Bad(source, $"vocab entry {MessageText.Quote(entry.Name)} has negative id {id}");
            if (!byId.TryAdd(id, entry.Name)) throw Bad(source, $"id {id} is given to both {MessageText.Quote(byId[id])} and {MessageText.Quote(entry.Name)}");
        }
        var special = new HashSet<int>();
        var userDefined = new HashSet<int>();
        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
        {
            foreach (var token in added.EnumerateArray())
            {
                int id = token.GetProperty("id").GetInt32();
                string content = token.GetProperty("content").GetString() ?? "";
                if (id < 0) throw Bad(source, $"added token {MessageText.Quote(content)} has negative id {id}");
                if (byId.TryGetValue(id, out var existing) && existing != content)
                    throw Bad(source, $"added token {id} {MessageText.Quote(content)} differs from vocab entry {MessageText.Quote(existing)}");
                byId[id] = content;
                (GetBool(token, "special", false) ? special : userDefined).Add(id);
            }
        }
        int size = byId.Count == 0 ? 0 : byId.Keys.Max() + 1;
        if (size == 0) throw Bad(source, "the vocabulary is empty");
        if (size != byId.Count) throw Bad(source, $"ids are not contiguous: {byId.Count} pieces but the largest id is {size - 1}");
        var pieces = new string[size];
        foreach (var (id, piece) in byId) pieces[id] = piece;

        string? unkToken = model.TryGetProperty("unk_token", out var u) && u.ValueKind == JsonValueKind.String ? u.GetString() : null;
        int unkId = unkToken is not null ? Array.IndexOf(pieces, unkToken) : -1;
        if (unkId < 0) throw Bad(source, unkToken is null ? "model.unk_token is missing" : $"unk_token {MessageText.Quote(unkToken)} is not in the vocabulary");
        var types = new TokenType[size];
        for (int id = 0; id < size; id++)
        {
            types[id] =
                id == unkId ? TokenType.Unknown :
                special.Contains(id) ? TokenType.Control :
                userDefined.Contains(id) ? TokenType.UserDefined :
                byteFallback && LlamaTokenizer.ParseBytePiece(pieces[id]) >= 0 ? TokenType.Byte :
                TokenType.Normal;
        }

        var merges = ReadMerges(model, source);
        var (dummyPrefix, onlyIfAbsent, split) = ReadWhitespaceHandling(root, source);
        var options = new TokenizerOptions
        {
            AddDummyPrefix = dummyPrefix,
            RemoveExtraWhitespaces = false,
            EscapeWhitespaces = true,
            ByteFallback = byteFallback,
            BosId = Array.IndexOf(pieces, "<s>"),
            EosId = Array.IndexOf(pieces, "</s>"),
            PadId = -1,
            DummyPrefixOnlyIfAbsent = onlyIfAbsent,
            SplitBeforeSpaceSymbol = split,
            FuseUnknown = fuseUnk,
        };
        return LlamaTokenizer.Create(pieces, new float[size], types, options, merges, source);
    }

    private static bool GetBool(JsonElement obj, string name, bool fallback) =>
        obj.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : fallback;

    private static List<(string, string)> ReadMerges(JsonElement model, string source)
    {
        var merges = new List<(string, string)>();
        if (!model.TryGetProperty("merges", out var list) || list.ValueKind != JsonValueKind.Array) return merges;
        int rank = 0;
        foreach (var m in list.EnumerateArray())
        {
            if (m.ValueKind == JsonValueKind.String)
            {
                // Legacy form "a b": exactly one space (pieces use '▁', never ' ').
                string s = m.GetString()!;
                int space = s.IndexOf(' ');
                if (space <= 0 || space == s.Length - 1 || s.IndexOf(' ', space + 1) >= 0)
                    throw Bad(source, $"merge {rank} {MessageText.Quote(s)} is not of the form \"a b\"");
                merges.Add((s[..space], s[(space + 1)..]));
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2)
            {
                merges.Add((m[0].GetString()!, m[1].GetString()!));
            }
            else throw Bad(source, $"merge {rank} is neither \"a b\" nor [\"a\", \"b\"]");
            rank++;
        }
        return merges;
    }

    // Where the spaces become '▁' and the dummy prefix comes from: the normalizer or a Metaspace
    // pre-tokenizer. Returns (add a prefix, only when the text lacks one, split words before '▁').
    private static (bool Prefix, bool OnlyIfAbsent, bool Split) ReadWhitespaceHandling(JsonElement root, string source)
    {
        bool prepend = false, replace = false;
        if (root.TryGetProperty("normalizer", out var normalizer) && normalizer.ValueKind == JsonValueKind.Object)
        {
            var steps = Type(normalizer) == "Sequence" ? [.. normalizer.GetProperty("normalizers").EnumerateArray()] : new[] { normalizer };
            foreach (var step in steps)
            {
                switch (Type(step))
                {
                    case "Prepend" when step.GetProperty("prepend").GetString() == "\u2581":
                        if (replace) throw Bad(source, "normalizer Prepend after Replace is not supported");
                        prepend = true;
                        break;
                    case "Replace" when IsSpaceToMeta(step):
                        replace = true;
                        break;
                    default:
                        throw Bad(source, $"normalizer {MessageText.Quote(Type(step))} is not supported (expected Prepend(\"▁\") and Replace(\" \", \"▁\"))");
                }
            }
        }
        bool metaspace = false, onlyIfAbsent = false, split = false, metaPrefix = false;
        if (root.TryGetProperty("pre_tokenizer", out var pre) && pre.ValueKind == JsonValueKind.Object)
        {
            if (Type(pre) != "Metaspace") throw Bad(source, $"pre_tokenizer {MessageText.Quote(Type(pre))} is not supported (only Metaspace)");
            if (pre.TryGetProperty("replacement", out var rep) && rep.GetString() != "\u2581")
                throw Bad(source, "Metaspace replacement other than '▁' is not supported");
            metaspace = true;
            // Newer files: prepend_scheme "always" | "first" | "never"; older: add_prefix_space.
            // "first" differs from "always" only for text split by added tokens, which we keep whole.
            if (pre.TryGetProperty("prepend_scheme", out var scheme) && scheme.ValueKind == JsonValueKind.String)
                metaPrefix = scheme.GetString() != "never";
            else
                metaPrefix = GetBool(pre, "add_prefix_space", true);
            onlyIfAbsent = true;
            // Older Metaspace always split; newer files say so with "split".
            split = GetBool(pre, "split", true);
        }
        if (metaspace && (prepend || replace)) throw Bad(source, "both a '▁' normalizer and a Metaspace pre-tokenizer");
        if (!metaspace && !replace) throw Bad(source, "spaces are never turned into '▁' (no Replace normalizer or Metaspace pre-tokenizer): not a Llama-style tokenizer");
        return metaspace ? (metaPrefix, onlyIfAbsent, split) : (prepend, false, false);

        static string Type(JsonElement e) => e.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "";

        static bool IsSpaceToMeta(JsonElement step) =>
            step.TryGetProperty("pattern", out var p) && p.ValueKind == JsonValueKind.Object &&
            p.TryGetProperty("String", out var s) && s.GetString() == " " &&
            step.TryGetProperty("content", out var c) && c.GetString() == "\u2581";
    }
}
