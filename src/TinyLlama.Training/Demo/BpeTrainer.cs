// A small byte-pair-encoding trainer (Sennrich et al., "Neural Machine Translation of Rare Words with
// Subword Units", 2016) that yields a Llama-style tokenizer: the Llama 2 layout of special pieces
// (<unk> = 0, <s> = 1, </s> = 2), 256 byte-fallback pieces <0x00>..<0xFF> so that any text encodes,
// one piece per character of the corpus, then one piece per learned merge, applied by rank as Hugging
// Face BPE does (LlamaTokenizer.FromVocabularyWithMerges, or tokenizer.json on disk).
//
// Training, in four lines:
//   1. normalise as Llama does ("Hello world" -> "▁Hello▁world") and cut the text into words, each
//      starting at a '▁'; count how often each word occurs;
//   2. spell every word as a list of characters;
//   3. count every adjacent pair of symbols over all words (weighted by the word's count), take the
//      most frequent one (ties: the smaller pair in ordinal order, so the result never depends on
//      dictionary order) and merge it everywhere;
//   4. repeat until the merge budget is spent or no pair occurs twice.
// One rule keeps numbers and punctuation apart, as Llama's tokenizer splits digits: only letters merge,
// each word's leading '▁' included; digits and punctuation stay single characters.
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using TinyLlama.Tokenizers;

namespace TinyLlama.Training.Demo;

/// <summary>A trained BPE vocabulary: pieces by id, their types, and the merges in rank order.</summary>
public sealed class BpeVocabulary
{
    internal BpeVocabulary(List<string> pieces, List<TokenType> types, List<(string Left, string Right)> merges)
    {
        Pieces = pieces;
        Types = types;
        Merges = merges;
    }

    /// <summary>Piece text by id.</summary>
    public IReadOnlyList<string> Pieces { get; }

    /// <summary>Piece type by id (unknown, control, byte or normal).</summary>
    public IReadOnlyList<TokenType> Types { get; }

    /// <summary>The learned merges, most frequent first (the encoder applies them in this order).</summary>
    public IReadOnlyList<(string Left, string Right)> Merges { get; }

    /// <summary>The tokenizer: Llama's normalisation, BOS 1, EOS 2, byte fallback, merges by rank.</summary>
    public LlamaTokenizer ToTokenizer() => LlamaTokenizer.FromVocabularyWithMerges(Pieces, Types, Merges);

    /// <summary>
    /// Writes a Hugging Face tokenizer.json with the layout of Llama 2's file (normaliser Prepend("▁") +
    /// Replace(" ", "▁"), BPE with byte_fallback and fuse_unk, &lt;unk&gt;/&lt;s&gt;/&lt;/s&gt; as special
    /// added tokens), which <see cref="LlamaTokenizer.Load"/> and the transformers library both read.
    /// </summary>
    public void SaveHuggingFaceJson(string path)
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteNull("truncation");
            w.WriteNull("padding");
            w.WriteStartArray("added_tokens");
            for (int id = 0; id < Pieces.Count; id++)
            {
                if (Types[id] is not (TokenType.Unknown or TokenType.Control)) continue;
                w.WriteStartObject();
                w.WriteNumber("id", id);
                w.WriteString("content", Pieces[id]);
                w.WriteBoolean("single_word", false);
                w.WriteBoolean("lstrip", false);
                w.WriteBoolean("rstrip", false);
                w.WriteBoolean("normalized", false);
                w.WriteBoolean("special", true);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartObject("normalizer");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("normalizers");
            w.WriteStartObject(); w.WriteString("type", "Prepend"); w.WriteString("prepend", "\u2581"); w.WriteEndObject();
            w.WriteStartObject(); w.WriteString("type", "Replace"); WriteStringPattern(w, " "); w.WriteString("content", "\u2581"); w.WriteEndObject();
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteNull("pre_tokenizer");
            w.WriteNull("post_processor");
            w.WriteStartObject("decoder");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("decoders");
            w.WriteStartObject(); w.WriteString("type", "Replace"); WriteStringPattern(w, "\u2581"); w.WriteString("content", " "); w.WriteEndObject();
            w.WriteStartObject(); w.WriteString("type", "ByteFallback"); w.WriteEndObject();
            w.WriteStartObject(); w.WriteString("type", "Fuse"); w.WriteEndObject();
            w.WriteStartObject(); w.WriteString("type", "Strip"); w.WriteString("content", " "); w.WriteNumber("start", 1); w.WriteNumber("stop", 0); w.WriteEndObject();
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteStartObject("model");
            w.WriteString("type", "BPE");
            w.WriteNull("dropout");
            w.WriteString("unk_token", "<unk>");
            w.WriteNull("continuing_subword_prefix");
            w.WriteNull("end_of_word_suffix");
            w.WriteBoolean("fuse_unk", true);
            w.WriteBoolean("byte_fallback", true);
            w.WriteStartObject("vocab");
            for (int id = 0; id < Pieces.Count; id++) w.WriteNumber(Pieces[id], id);
            w.WriteEndObject();
            w.WriteStartArray("merges");
            foreach (var (left, right) in Merges)
            {
                w.WriteStartArray();
                w.WriteStringValue(left);
                w.WriteStringValue(right);
                w.WriteEndArray();
            }
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
        var full = Path.GetFullPath(path);
        var tmp = full + ".tmp-" + Environment.ProcessId;
        File.WriteAllBytes(tmp, stream.ToArray());
        File.Move(tmp, full, overwrite: true);

        static void WriteStringPattern(Utf8JsonWriter w, string s)
        {
            w.WriteStartObject("pattern");
            w.WriteString("String", s);
            w.WriteEndObject();
        }
    }
}

/// <summary>Learns BPE merges from a corpus.</summary>
public static class BpeTrainer
{
    /// <summary>
    /// Learns up to <paramref name="mergeCount"/> merges from <paramref name="texts"/> and returns the
    /// vocabulary: &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, the 256 byte pieces, the corpus's characters (ordinal
    /// order), then the merged pieces in the order they were learned.
    /// </summary>
    public static BpeVocabulary Train(IEnumerable<string> texts, int mergeCount)
    {
        ArgumentNullException.ThrowIfNull(texts);
        ArgumentOutOfRangeException.ThrowIfNegative(mergeCount);

        // 1. Word counts over the normalised text.
        var wordCounts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var text in texts)
            foreach (var word in Words(text))
                wordCounts[word] = wordCounts.GetValueOrDefault(word) + 1;

        // 2. Every word spelled as characters; the characters are the base vocabulary.
        var words = new List<(List<string> Symbols, long Count)>(wordCounts.Count);
        var alphabet = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var (word, count) in wordCounts)
        {
            var symbols = new List<string>();
            foreach (var rune in word.EnumerateRunes()) symbols.Add(rune.ToString());
            alphabet.UnionWith(symbols);
            words.Add((symbols, count));
        }

        // 3-4. Merge the most frequent pair, again and again.
        var merges = new List<(string Left, string Right)>();
        var pairCounts = new Dictionary<(string, string), long>();
        while (merges.Count < mergeCount)
        {
            pairCounts.Clear();
            foreach (var (symbols, count) in words)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    if (CanMerge(symbols[i], symbols[i + 1]))
                        pairCounts[(symbols[i], symbols[i + 1])] = pairCounts.GetValueOrDefault((symbols[i], symbols[i + 1])) + count;
            (string Left, string Right)? best = null;
            long bestCount = 1; // a pair seen once saves nothing worth a vocabulary entry
            foreach (var (pair, count) in pairCounts)
                if (count > bestCount || (count == bestCount && best is { } b && Compare(pair, b) < 0))
                    (best, bestCount) = (pair, count);
            if (best is not { } merge) break;
            merges.Add(merge);
            foreach (var (symbols, _) in words) ApplyMerge(symbols, merge.Left, merge.Right);
        }

        // The vocabulary in Llama 2's layout.
        var pieces = new List<string> { "<unk>", "<s>", "</s>" };
        var types = new List<TokenType> { TokenType.Unknown, TokenType.Control, TokenType.Control };
        for (int b = 0; b < 256; b++)
        {
            pieces.Add(LlamaTokenizer.BytePiece(b));
            types.Add(TokenType.Byte);
        }
        var known = new HashSet<string>(pieces, StringComparer.Ordinal);
        foreach (var piece in alphabet.Concat(merges.Select(m => m.Left + m.Right)))
        {
            // A merged string can arise twice (from "▁a"+"b" and from "▁"+"ab"): one piece, two merges.
            if (!known.Add(piece)) continue;
            pieces.Add(piece);
            types.Add(TokenType.Normal);
        }
        return new BpeVocabulary(pieces, types, merges);
    }

    /// <summary>
    /// Llama's normalisation ("▁" in front, every space a "▁") cut before each "▁": "Hello world" ->
    /// ["▁Hello", "▁world"]. Empty text has no words.
    /// </summary>
    public static IEnumerable<string> Words(string text)
    {
        if (text.Length == 0) yield break;
        string normalized = LlamaTokenizer.SpaceSymbol + text.Replace(' ', LlamaTokenizer.SpaceSymbol);
        int start = 0;
        for (int i = 1; i <= normalized.Length; i++)
        {
            if (i < normalized.Length && normalized[i] != LlamaTokenizer.SpaceSymbol) continue;
            yield return normalized[start..i];
            start = i;
        }
    }

    /// <summary>Only letters merge, with the word's leading '▁': digits and punctuation stay single characters.</summary>
    public static bool CanMerge(string left, string right) => IsLetters(left, allowLeadingSpace: true) && IsLetters(right, allowLeadingSpace: false);

    private static bool IsLetters(string symbol, bool allowLeadingSpace)
    {
        int start = allowLeadingSpace && symbol[0] == LlamaTokenizer.SpaceSymbol ? 1 : 0;
        for (int i = start; i < symbol.Length; i++)
            if (!char.IsAsciiLetter(symbol[i])) return false;
        return true;
    }

    private static int Compare((string Left, string Right) a, (string Left, string Right) b)
    {
        int c = string.CompareOrdinal(a.Left, b.Left);
        return c != 0 ? c : string.CompareOrdinal(a.Right, b.Right);
    }

    // Replaces every adjacent (left, right) in the word by left+right, scanning left to right.
    private static void ApplyMerge(List<string> symbols, string left, string right)
    {
        for (int i = 0; i + 1 < symbols.Count; i++)
        {
            if (symbols[i] != left || symbols[i + 1] != right) continue;
            symbols[i] = left + right;
            symbols.RemoveAt(i + 1);
        }
    }
}
