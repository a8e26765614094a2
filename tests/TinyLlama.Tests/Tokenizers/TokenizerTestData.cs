// Shared inputs for the tokenizer tests: the Llama 2 tokenizer.model, the reference cases produced by
// SentencePiece 0.1.97 (cases.jsonl: text, ids without BOS, pieces), and seeded random texts that mix
// the input classes a tokenizer gets wrong first (spaces at the edges and in runs, newlines, digits,
// punctuation, accents, CJK, emoji that only byte fallback can encode).
using System.Text;
using System.Text.Json;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Tokenizers;

namespace TinyLlama.Tests.Tokenizers;

public sealed record TokenizerCase(int Line, string Text, int[] Ids, string[] Pieces)
{
    public override string ToString() => $"line {Line}: {JsonSerializer.Serialize(Text)}";
}

public static class TokenizerTestData
{
    public const string ModelPath = "llama2-tokenizer/tokenizer.model";
    public const string CasesPath = "llama2-tokenizer/cases.jsonl";

    private static readonly Lock Gate = new();
    private static LlamaTokenizer? _llama;

    /// <summary>The Llama 2 tokenizer (loaded once); skips the test when the reference data is absent.</summary>
    public static LlamaTokenizer Llama()
    {
        string path = SharedData.Require(ModelPath);
        lock (Gate) return _llama ??= LlamaTokenizer.FromSentencePieceModel(path);
    }

    /// <summary>Every line of cases.jsonl; skips the test when it is absent.</summary>
    public static List<TokenizerCase> Cases()
    {
        string path = SharedData.Require(CasesPath);
        var cases = new List<TokenizerCase>();
        int line = 0;
        foreach (string json in File.ReadLines(path))
        {
            line++;
            if (json.Length == 0) continue;
            using var doc = JsonDocument.Parse(json);
            var root = doc.RootElement;
            cases.Add(new TokenizerCase(line, root.GetProperty("text").GetString()!,
                [.. root.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32())],
                [.. root.GetProperty("pieces").EnumerateArray().Select(e => e.GetString()!)]));
        }
        Assert.True(cases.Count >= 20, $"expected the reference cases, found {cases.Count}");
        return cases;
    }

    private static readonly string[] Fragments =
    [
        // ASCII words and code
        "the", "The", "llama", "alpaca", "Hello", "world", "tokenizer", "ALL", "CAPS", "snake_case", "fooBar", "x",
        "https://example.com/a?b=1", "def f(x):", "return", "{\"k\": [1, 2]}", "<s>", "</s>", "<unk>", "#", "###",
        // spaces, tabs and newlines in runs
        " ", " ", "  ", "   ", "    ", "\t", "\n", "\n\n", "\r\n", " \n ",
        // digits and punctuation
        "0", "7", "42", "2024", "3.14159", "-", ".", ",", "!", "?", "...", "(", ")", "'", "\"", "@", "%", "&", "*", "+", "=", "~", "`", "|", "\\",
        // accented Latin, Greek, Cyrillic
        "é", "café", "naïve", "Köln", "Grüße", "ñandú", "ø", "Ångström", "façade", "αβγ", "Ωμέγα", "Привет", "дела",
        // CJK, kana, Hangul
        "東京", "日本語", "你好", "世界", "。", "，", "ひらがな", "カタカナ", "한국어",
        // emoji and other characters outside the vocabulary (byte fallback)
        "🦙", "🚀", "✨", "👍🏽", "🇩🇪", "👨‍👩‍👧", "𝔘𝔫𝔦", "ꙮ", "\u200b", "\u00a0", "é" /* e + combining acute */,
    ];

    /// <summary>Seeded random texts (the same on every run).</summary>
    public static List<string> RandomTexts(int count, int seed)
    {
        var rng = new Random(seed);
        var texts = new List<string>(count);
        var sb = new StringBuilder();
        for (int i = 0; i < count; i++)
        {
            sb.Clear();
            int parts = rng.Next(0, 16);
            for (int p = 0; p < parts; p++)
            {
                sb.Append(Fragments[rng.Next(Fragments.Length)]);
                // Usually a single space between fragments, sometimes none, sometimes several.
                int r = rng.Next(10);
                if (r < 6) sb.Append(' ');
                else if (r == 6) sb.Append(' ', rng.Next(2, 5));
            }
            // Leading spaces on some texts (trailing ones arise from the separators above).
            if (rng.Next(5) == 0) sb.Insert(0, new string(' ', rng.Next(1, 4)));
            texts.Add(sb.ToString());
        }
        return texts;
    }
}
