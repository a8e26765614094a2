// The tokenizer.json path, where merges are ranked by their position in the merge list.
//
// 1. A hand-built file with five merges whose outputs are worked out by hand below; swapping two
//    merges changes the result, so the rank order (not a score) is what is tested. Also: both merge
//    forms, byte fallback, fused <unk>, special added tokens not matched in text, the Metaspace
//    pre-tokenizer (prefix only when absent, optional word split) and malformed files.
// 2. A file derived from the Llama 2 tokenizer.model the way Hugging Face's converter does it
//    (transformers' SentencePieceExtractor: every split of a piece into two vocabulary pieces is a
//    merge, ranked by the piece's score), which must reproduce SentencePiece's reference cases.
using System.Text;
using System.Text.Json;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Tokenizers;

namespace TinyLlama.Tests.Tokenizers;

public sealed class HuggingFaceJsonTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "tinyllama-hfjson-" + Guid.NewGuid().ToString("N"));

    public HuggingFaceJsonTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, string json)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, json);
        return path;
    }

    // ids:                0        1      2       3         4         5    6    7    8    9     10    11     12    13
    private static readonly string[] TinyVocab = ["<unk>", "<s>", "</s>", "<0xC3>", "<0xA9>", "▁", "a", "b", "c", "ab", "bc", "abc", "▁a", "b▁"];
    private static readonly string[][] TinyMerges = [["b", "c"], ["a", "b"], ["a", "bc"], ["b", "▁"], ["▁", "a"]];

    /// <summary>A Llama-style tokenizer.json (the fuzz harness's writer). <paramref name="preTokenizer"/> null: Llama 2's normalizer.</summary>
    private static string TokenizerJson(IReadOnlyList<string> vocab, IEnumerable<string[]> merges, bool arrayMerges = false,
        string? preTokenizer = null, bool fuseUnk = true, string modelType = "BPE") =>
        Encoding.UTF8.GetString(TinyLlama.Cli.Fuzzing.FuzzSeeds.TokenizerJson(vocab, merges, arrayMerges, preTokenizer, fuseUnk, modelType));

    [Fact]
    public void TinyVocabulary_MergesFollowRankOrder_WorkedOutByHand()
    {
        var tok = LlamaTokenizer.Load(Write("tokenizer.json", TokenizerJson(TinyVocab, TinyMerges)));
        Assert.True(tok.UsesMergeRanks);
        Assert.Equal(14, tok.VocabSize);
        Assert.Equal((0, 1, 2), (tok.UnkId, tok.BosId, tok.EosId));
        // "▁abc": (b,c) rank 0 -> [▁ a bc]; (a,b) is stale; (a,bc) rank 2 -> [▁ abc]; (▁,a) stale.
        Assert.Equal([5, 11], tok.Encode("abc"));
        // "▁b▁a": (b,▁) rank 3 beats (▁,a) rank 4 -> [▁ b▁ a]; nothing else merges.
        Assert.Equal([5, 13, 6], tok.Encode("b a"));
        // "▁▁a": (▁,▁) is no merge; (▁,a) -> [▁ ▁a].
        Assert.Equal([5, 12], tok.Encode(" a"));
        // é is not in the vocabulary: its UTF-8 bytes C3 A9.
        Assert.Equal([5, 3, 4], tok.Encode("é"));
        // Unknown characters fuse into one <unk> (fuse_unk); "<s>" in text is characters, not BOS.
        Assert.Equal([5, 0, 6], tok.Encode("xyz!a"));
        Assert.Equal([5, 0], tok.Encode("<s>"));
        Assert.Equal([1, 5, 11, 2], tok.Encode("abc", addBos: true, addEos: true));
        // <s> and </s> invisible, the first '▁' dropped, "b▁" -> "b ", C3 A9 -> é.
        Assert.Equal("abc b a é", tok.Decode([1, 5, 11, 5, 13, 6, 5, 3, 4, 2]));
    }

    [Fact]
    public void TinyVocabulary_SwappingTwoMerges_ChangesTheResult()
    {
        // With "a b" before "b c", (a,b) wins and "ab"+"c" is not a merge: [▁ ab c].
        string[][] swapped = [TinyMerges[1], TinyMerges[0], .. TinyMerges[2..]];
        var tok = LlamaTokenizer.Load(Write("tokenizer.json", TokenizerJson(TinyVocab, swapped)));
        Assert.Equal([5, 9, 8], tok.Encode("abc"));
    }

    [Fact]
    public void TinyVocabulary_ArrayMergeForm_EqualsStringForm_AndFuseUnkCanBeOff()
    {
        var strings = LlamaTokenizer.Load(Write("a.json", TokenizerJson(TinyVocab, TinyMerges)));
        var arrays = LlamaTokenizer.Load(Write("b.json", TokenizerJson(TinyVocab, TinyMerges, arrayMerges: true)));
        foreach (string text in (string[])["abc", "b a", " a", "abcabc bc a b c", "é ab", ""])
            Assert.Equal(strings.Encode(text), arrays.Encode(text));
        var unfused = LlamaTokenizer.Load(Write("c.json", TokenizerJson(TinyVocab, TinyMerges, fuseUnk: false)));
        Assert.Equal([5, 0, 0, 0, 0, 6], unfused.Encode("xyz!a"));
    }

    [Fact]
    public void FromVocabularyWithMerges_EqualsTheTokenizerJsonPath()
    {
        var json = LlamaTokenizer.Load(Write("tokenizer.json", TokenizerJson(TinyVocab, TinyMerges)));
        TokenType[] types = [TokenType.Unknown, TokenType.Control, TokenType.Control, TokenType.Byte, TokenType.Byte, .. Enumerable.Repeat(TokenType.Normal, 9)];
        var arrays = LlamaTokenizer.FromVocabularyWithMerges(TinyVocab, types, [.. TinyMerges.Select(m => (m[0], m[1]))]);
        Assert.True(arrays.UsesMergeRanks);
        foreach (string text in (string[])["abc", "b a", " a", "abcabc bc a b c", "é ab", "xyz!a", ""])
            Assert.Equal(json.Encode(text), arrays.Encode(text));
    }

    [Fact]
    public void TinyVocabulary_Metaspace_PrefixesOnlyWhenAbsent_AndCanSplitWords()
    {
        var split = LlamaTokenizer.Load(Write("split.json", TokenizerJson(TinyVocab, TinyMerges,
            preTokenizer: """{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}""")));
        var whole = LlamaTokenizer.Load(Write("whole.json", TokenizerJson(TinyVocab, TinyMerges,
            preTokenizer: """{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}""")));
        // " a" already starts with '▁' after replacement, so Metaspace adds no second one: [▁a].
        Assert.Equal([12], split.Encode(" a"));
        Assert.Equal([12], whole.Encode(" a"));
        // Split into words "▁b" "▁a": the merge (b,▁) cannot cross the word boundary.
        Assert.Equal([5, 7, 12], split.Encode("b a"));
        Assert.Equal([5, 13, 6], whole.Encode("b a"));
        Assert.Equal([5, 11], split.Encode("abc"));
    }

    [Fact]
    public void Directory_WithOnlyTokenizerJson_LoadsIt_AndMissingPathsThrowFileNotFound()
    {
        Write("tokenizer.json", TokenizerJson(TinyVocab, TinyMerges));
        Assert.True(LlamaTokenizer.Load(_dir).UsesMergeRanks);
        Assert.Throws<FileNotFoundException>(() => LlamaTokenizer.Load(Path.Combine(_dir, "missing")));
        Assert.Throws<FileNotFoundException>(() => LlamaTokenizer.Load(Path.Combine(_dir, "missing.json")));
    }

    [Fact]
    public void MalformedOrUnsupportedFiles_GiveInvalidDataException_NamingTheFile()
    {
        var cases = new (string Name, string Json)[]
        {
            ("truncated.json", TokenizerJson(TinyVocab, TinyMerges)[..200]),
            ("unigram.json", TokenizerJson(TinyVocab, TinyMerges, modelType: "Unigram")),
            ("badmerge.json", TokenizerJson(TinyVocab, [["a", "zz"]])),
            ("bytelevel.json", TokenizerJson(TinyVocab, TinyMerges, preTokenizer: """{"type": "ByteLevel", "add_prefix_space": false}""")),
            ("array.json", "[1, 2, 3]"),
            ("wrongkind.json", TokenizerJson(TinyVocab, TinyMerges).Replace("\"a\": 6", "\"a\": \"six\"")),
            ("hole.json", TokenizerJson(TinyVocab, TinyMerges).Replace("\"b\\u2581\": 13", "\"b\\u2581\": 20")),
        };
        foreach (var (name, json) in cases)
        {
            string path = Write(name, json);
            var e = Assert.Throws<InvalidDataException>(() => LlamaTokenizer.Load(path));
            Assert.Contains(path, e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
    }

    /// <summary>
    /// tokenizer.json from the Llama 2 tokenizer.model, with merges as transformers'
    /// SentencePieceExtractor derives them: for every piece, every split into two vocabulary pieces,
    /// ordered by the piece's score (descending), ties by the ids of the two halves.
    /// </summary>
    private static string DeriveLlamaJson(out int mergeCount)
    {
        var model = SentencePieceModel.Load(SharedData.Require(TokenizerTestData.ModelPath));
        var vocab = model.Pieces.Select(p => p.Piece).ToArray();
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < vocab.Length; i++) ids[vocab[i]] = i;
        var merges = new List<(float Score, int Left, int Right, string[] Pair)>();
        for (int id = 0; id < vocab.Length; id++)
        {
            // Only pieces a SentencePiece merge may produce (not <s>, <0x0A>, ...).
            if (model.Pieces[id].Type is not (TokenType.Normal or TokenType.UserDefined or TokenType.Unused)) continue;
            string piece = vocab[id];
            for (int cut = 1; cut < piece.Length; cut++)
            {
                if (char.IsLowSurrogate(piece[cut])) continue; // split between code points only
                if (ids.TryGetValue(piece[..cut], out int l) && ids.TryGetValue(piece[cut..], out int r))
                    merges.Add((model.Pieces[id].Score, l, r, [piece[..cut], piece[cut..]]));
            }
        }
        // OrderBy is stable: equal keys keep vocabulary order, as Python's sorted does.
        var ordered = merges.OrderByDescending(m => m.Score).ThenBy(m => m.Left).ThenBy(m => m.Right).Select(m => m.Pair).ToList();
        mergeCount = ordered.Count;
        return TokenizerJson(vocab, ordered);
    }

    [SkippableFact]
    public void DerivedFromLlamaModel_EncodesTheReferenceCasesLikeSentencePiece()
    {
        var tok = LlamaTokenizer.FromHuggingFaceJson(Write("llama.json", DeriveLlamaJson(out int mergeCount)));
        Assert.True(mergeCount > 30000, $"only {mergeCount} merges derived");
        Assert.Equal(32000, tok.VocabSize);
        Assert.Equal(TokenType.Byte, tok.GetTokenType(13));
        foreach (var c in TokenizerTestData.Cases())
        {
            int[] ids = tok.Encode(c.Text);
            Assert.True(c.Ids.SequenceEqual(ids), $"{c}: expected [{string.Join(", ", c.Ids)}], got [{string.Join(", ", ids)}]");
            Assert.Equal(c.Text, tok.Decode(ids));
        }
    }

    [SkippableFact]
    public void DerivedFromLlamaModel_AgreesWithTheSentencePiecePath_OnRandomTexts()
    {
        var hf = LlamaTokenizer.FromHuggingFaceJson(Write("llama.json", DeriveLlamaJson(out _)));
        var sp = TokenizerTestData.Llama();
        foreach (string text in TokenizerTestData.RandomTexts(300, seed: 99))
        {
            int[] expected = sp.Encode(text), ids = hf.Encode(text);
            Assert.True(expected.SequenceEqual(ids), $"{JsonSerializer.Serialize(text)}: SentencePiece [{string.Join(", ", expected)}], tokenizer.json [{string.Join(", ", ids)}]");
        }
    }
}
