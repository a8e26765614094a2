// Shared helpers for the SFT data tests: a real LlamaTokenizer small enough to reason about by hand
// (its vocabulary is only the control pieces, '▁' and the 256 byte-fallback pieces, so every
// character is one piece per UTF-8 byte), an independent hand encoder for it, and temporary files.
using System.Text;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Tokenizers;
using TinyLlama.Training;
using TinyLlama.Training.Data;

namespace TinyLlama.Tests.Training;

internal static class DataTestUtil
{
    public const int Bos = 1, Eos = 2, Space = 259;
    public const int M = TrainingInfo.IgnoreIndex;

    private static readonly Lazy<LlamaTokenizer> ByteTok = new(() =>
    {
        var pieces = new List<string> { "<unk>", "<s>", "</s>" };
        var types = new List<TokenType> { TokenType.Unknown, TokenType.Control, TokenType.Control };
        for (int b = 0; b < 256; b++) { pieces.Add(LlamaTokenizer.BytePiece(b)); types.Add(TokenType.Byte); }
        pieces.Add("\u2581"); types.Add(TokenType.Normal);
        return LlamaTokenizer.FromVocabulary(pieces, new float[pieces.Count], types);
    });

    /// <summary>Ids 0-2 control, 3-258 bytes 0-255, 259 '▁'. BOS 1, EOS 2, pad -1 (as Llama).</summary>
    public static LlamaTokenizer ByteTokenizer => ByteTok.Value;

    /// <summary>What the byte tokenizer must give for text, worked out independently: a dummy-prefix '▁', spaces as '▁', other characters as their UTF-8 bytes.</summary>
    public static int[] Enc(string text)
    {
        if (text.Length == 0) return [];
        var ids = new List<int> { Space };
        Span<byte> buf = stackalloc byte[4];
        foreach (var rune in text.EnumerateRunes())
        {
            if (rune.Value == ' ') { ids.Add(Space); continue; }
            int n = rune.EncodeToUtf8(buf);
            for (int i = 0; i < n; i++) ids.Add(3 + buf[i]);
        }
        return [.. ids];
    }

    public static int[] Masked(int n) => Enumerable.Repeat(M, n).ToArray();

    public static int[] Cat(params int[][] parts) => parts.SelectMany(p => p).ToArray();

    /// <summary>Parses in-memory file content under the name <paramref name="name"/>.</summary>
    public static SftDataset Parse(string content, SftFormat format, int maxLength = 4096, string name = "data.jsonl", string? defaultSystem = null) =>
        SftDataset.Parse(Encoding.UTF8.GetBytes(content), name, format, TextEncoder.From(ByteTokenizer), maxLength, defaultSystem);

    /// <summary>The message of the data error that parsing <paramref name="content"/> raises.</summary>
    public static string ErrorOf(string content, SftFormat format, string name = "data.jsonl") =>
        Assert.Throws<InvalidDataException>(() => Parse(content, format, name: name)).Message;

    /// <summary>The Llama tokenizer of the tiny-random-llama reference model; skips when absent.</summary>
    public static LlamaTokenizer ReferenceTokenizer() => LlamaTokenizer.Load(SharedData.Require("tiny-random-llama/tokenizer.model"));

    /// <summary>A synthetic example: BOS, then <paramref name="length"/> - 1 ids starting at <paramref name="first"/>, the first <paramref name="masked"/> positions masked.</summary>
    public static SftExample Synthetic(string source, int length, int first, int masked)
    {
        var ids = new int[length];
        ids[0] = Bos;
        for (int i = 1; i < length; i++) ids[i] = first + i;
        var labels = (int[])ids.Clone();
        for (int i = 0; i < masked; i++) labels[i] = M;
        return new SftExample(ids, labels, source);
    }
}
