// Tokenizers inside GGUF files: the Llama 2 SentencePiece tokenizer written as tokenizer.ggml.model
// "llama" and read back encodes every SentencePiece reference case exactly; a merges-ranked tokenizer
// (trained by the demo's BpeTrainer, Metaspace settings included) written as "gpt2" and read back
// encodes like the original; LlamaTokenizer.Load takes .gguf files; byte-level GPT-2 vocabularies,
// which this tokenizer does not implement, are refused.
using TinyLlama.Formats;
using TinyLlama.Tests.Tokenizers;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Demo;
using static TinyLlama.Tests.Formats.FormatTestUtil;

namespace TinyLlama.Tests.Formats;

public class GgufTokenizerTests
{
    private static string WriteVocabOnly(TempDir dir, LlamaTokenizer tokenizer, string name = "vocab.gguf")
    {
        string path = dir.File(name);
        var md = new List<KeyValuePair<string, GgufValue>> { new(GgufModel.Keys.Architecture, GgufValue.String("llama")) };
        md.AddRange(GgufModel.TokenizerMetadata(tokenizer));
        GgufWriter.Save(path, md, []);
        return path;
    }

    [SkippableFact]
    public void Llama2TokenizerRoundTripsAndEncodesEveryReferenceCase()
    {
        var original = TokenizerTestData.Llama();
        using var dir = new TempDir();
        string path = WriteVocabOnly(dir, original);
        var file = GgufFile.Open(path);
        Assert.Equal("\"llama\"", file.Metadata[GgufModel.Keys.TokenizerModel].ToString());
        var tok = LlamaTokenizer.Load(path);
        Assert.False(tok.UsesMergeRanks);
        Assert.Equal((original.VocabSize, original.BosId, original.EosId, original.UnkId, original.PadId), (tok.VocabSize, tok.BosId, tok.EosId, tok.UnkId, tok.PadId));
        for (int i = 0; i < original.VocabSize; i++)
            Assert.True(original.IdToPiece(i) == tok.IdToPiece(i) && original.GetScore(i) == tok.GetScore(i) && original.GetTokenType(i) == tok.GetTokenType(i), $"piece {i}");
        foreach (var c in TokenizerTestData.Cases())
        {
            Assert.True(c.Ids.SequenceEqual(tok.Encode(c.Text)), c.ToString());
            Assert.Equal(c.Text, tok.Decode(c.Ids));
        }
    }

    [Fact]
    public void MergesTokenizerRoundTripsAndEncodesIdentically()
    {
        string[] corpus = ["the llama ate the grass", "a llama and an alpaca went to the market", "the the the llamas"];
        var original = BpeTrainer.Train(corpus, 30).ToTokenizer();
        Assert.True(original.UsesMergeRanks);
        using var dir = new TempDir();
        string path = WriteVocabOnly(dir, original, "bpe.bin"); // found by its magic, not its name
        var tok = LlamaTokenizer.Load(path);
        Assert.True(tok.UsesMergeRanks);
        Assert.Equal(original.MergesInRankOrder(), tok.MergesInRankOrder());
        Assert.Equal("\"gpt2\"", GgufFile.Open(path).Metadata[GgufModel.Keys.TokenizerModel].ToString());
        foreach (string text in corpus.Concat(TokenizerTestData.RandomTexts(200, 5)))
            Assert.True(original.Encode(text, addBos: true).SequenceEqual(tok.Encode(text, addBos: true)), text);
    }

    [Fact]
    public void HuggingFaceMetaspaceSettingsSurvive()
    {
        // A tokenizer.json with the Metaspace pre-tokenizer: prefix only when absent, split into words.
        var bpe = BpeTrainer.Train(["ab ab abc", "b c"], 4);
        var original = LlamaTokenizer.FromVocabularyWithMerges(bpe.Pieces, bpe.Types, bpe.Merges,
            new TokenizerOptions { DummyPrefixOnlyIfAbsent = true, SplitBeforeSpaceSymbol = true, FuseUnknown = false, ByteFallback = false, PadId = 0 });
        using var dir = new TempDir();
        var tok = LlamaTokenizer.Load(WriteVocabOnly(dir, original));
        Assert.Equal((true, true, false, false, 0), (tok.Options.DummyPrefixOnlyIfAbsent, tok.Options.SplitBeforeSpaceSymbol, tok.Options.FuseUnknown, tok.Options.ByteFallback, tok.PadId));
        foreach (string text in new[] { " ab abc", "abab c", "zz ab", "ab  b" })
            Assert.Equal(original.Encode(text), tok.Encode(text));
    }

    [Fact]
    public void ModelFileCarriesItsTokenizer()
    {
        using var dir = new TempDir();
        string path = GgufModelTests.WriteSmallModelWithTokenizer(dir);
        var tok = GgufModel.LoadTokenizer(path);
        Assert.Equal([1, .. tok.Encode("the llama")], tok.Encode("the llama", addBos: true));
        Assert.Equal("the llama", tok.Decode(tok.Encode("the llama")));
    }

    [Fact]
    public void UnusableTokenizersAreRefused()
    {
        using var dir = new TempDir();
        string none = dir.File("none.gguf");
        GgufWriter.Save(none, new Dictionary<string, GgufValue> { [GgufModel.Keys.Architecture] = GgufValue.String("llama") }, []);
        AssertMessage(Assert.Throws<InvalidDataException>(() => LlamaTokenizer.Load(none)), none, "no tokenizer");

        string gpt2 = dir.File("gpt2.gguf");
        GgufWriter.Save(gpt2, new Dictionary<string, GgufValue>
        {
            [GgufModel.Keys.TokenizerModel] = GgufValue.String("gpt2"),
            [GgufModel.Keys.Tokens] = GgufValue.Array(new[] { "Ġ", "a", "Ġa" }),
            [GgufModel.Keys.TokenTypes] = GgufValue.Array(new[] { 1, 1, 1 }),
            [GgufModel.Keys.Merges] = GgufValue.Array(new[] { "Ġ a" }),
        }, []);
        AssertMessage(Assert.Throws<InvalidDataException>(() => LlamaTokenizer.Load(gpt2)), gpt2, "byte-level BPE");

        string bert = dir.File("bert.gguf");
        GgufWriter.Save(bert, new Dictionary<string, GgufValue> { [GgufModel.Keys.TokenizerModel] = GgufValue.String("bert") }, []);
        AssertMessage(Assert.Throws<InvalidDataException>(() => LlamaTokenizer.Load(bert)), bert, "'bert'", "not supported");

        string noUnk = dir.File("nounk.gguf");
        GgufWriter.Save(noUnk, new Dictionary<string, GgufValue>
        {
            [GgufModel.Keys.TokenizerModel] = GgufValue.String("llama"),
            [GgufModel.Keys.Tokens] = GgufValue.Array(new[] { "a", "b" }),
            [GgufModel.Keys.Scores] = GgufValue.Array(new[] { 0f, 0f }),
            [GgufModel.Keys.TokenTypes] = GgufValue.Array(new[] { 1, 1 }),
        }, []);
        AssertMessage(Assert.Throws<InvalidDataException>(() => LlamaTokenizer.Load(noUnk)), noUnk, "no unknown piece");

        string wrongType = dir.File("wrongtype.gguf");
        GgufWriter.Save(wrongType, new Dictionary<string, GgufValue>
        {
            [GgufModel.Keys.TokenizerModel] = GgufValue.String("llama"),
            [GgufModel.Keys.Tokens] = GgufValue.Array(new[] { 1, 2 }),
        }, []);
        AssertMessage(Assert.Throws<InvalidDataException>(() => LlamaTokenizer.Load(wrongType)), wrongType, "tokenizer.ggml.tokens", "must be an array of String");
    }
}
