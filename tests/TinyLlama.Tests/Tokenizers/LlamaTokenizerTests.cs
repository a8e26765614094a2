// The Llama 2 tokenizer against SentencePiece 0.1.97's own output (cases.jsonl), plus the properties
// the format promises: BOS/EOS handling, decode round trips, control pieces, byte fallback, unknown
// runs without byte fallback, and speed on a long text (the merge loop is O(n log n)).
using System.Diagnostics;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Tokenizers;
using Xunit.Abstractions;

namespace TinyLlama.Tests.Tokenizers;

public class LlamaTokenizerTests(ITestOutputHelper output)
{
    [SkippableFact]
    public void Model_HasLlama2Settings()
    {
        var tok = TokenizerTestData.Llama();
        Assert.Equal(32000, tok.VocabSize);
        Assert.Equal(0, tok.UnkId);
        Assert.Equal(1, tok.BosId);
        Assert.Equal(2, tok.EosId);
        Assert.Equal(-1, tok.PadId);
        Assert.True(tok.Options.AddDummyPrefix);
        Assert.False(tok.Options.RemoveExtraWhitespaces);
        Assert.True(tok.Options.ByteFallback);
        Assert.False(tok.UsesMergeRanks);
        Assert.Equal("<s>", tok.IdToPiece(1));
        Assert.Equal(TokenType.Control, tok.GetTokenType(2));
        Assert.Equal(TokenType.Byte, tok.GetTokenType(13));
        Assert.Equal(0x0A, tok.GetByteValue(13));
        Assert.Equal("<0x0A>", tok.IdToPiece(13));
        Assert.Equal(15043, tok.PieceToId("▁Hello"));
        Assert.True(tok.TryPieceToId("▁world", out int world) && world == 3186);
        Assert.False(tok.TryPieceToId("no such piece", out _));
        Assert.Equal(tok.UnkId, tok.PieceToId("no such piece"));
        Assert.Equal(-1f, tok.GetScore(260)); // "▁t", the first merge learnt
    }

    [SkippableFact]
    public void Encode_MatchesSentencePieceIdsAndPieces_ForEveryReferenceCase()
    {
        var tok = TokenizerTestData.Llama();
        foreach (var c in TokenizerTestData.Cases())
        {
            int[] ids = tok.Encode(c.Text);
            Assert.True(c.Ids.SequenceEqual(ids), $"{c}: expected [{string.Join(", ", c.Ids)}], got [{string.Join(", ", ids)}]");
            string[] pieces = [.. ids.Select(tok.IdToPiece)];
            Assert.Equal(c.Pieces, pieces);
        }
    }

    [SkippableFact]
    public void Decode_ReturnsTheText_ForEveryReferenceCase()
    {
        var tok = TokenizerTestData.Llama();
        foreach (var c in TokenizerTestData.Cases())
            Assert.True(c.Text == tok.Decode(c.Ids), $"{c}: decoded {System.Text.Json.JsonSerializer.Serialize(tok.Decode(c.Ids))}");
    }

    [SkippableFact]
    public void Encode_AddsBosAndEosOnlyWhenAsked()
    {
        var tok = TokenizerTestData.Llama();
        Assert.Equal([15043, 3186], tok.Encode("Hello world"));
        Assert.Equal([1, 15043, 3186], tok.Encode("Hello world", addBos: true));
        Assert.Equal([1, 15043, 3186, 2], tok.Encode("Hello world", addBos: true, addEos: true));
        Assert.Equal([1], tok.Encode("", addBos: true));
        Assert.Empty(tok.Encode(""));
    }

    [SkippableFact]
    public void Decode_ControlPiecesAreInvisible_AndDoNotDisturbTheLeadingSpaceRule()
    {
        var tok = TokenizerTestData.Llama();
        // <s> first: the dummy-prefix space of "▁Hello" is still removed, as SentencePiece does.
        Assert.Equal("Hello world", tok.Decode([1, 15043, 3186, 2]));
        // Only one leading '▁' goes: " leading" keeps its space (ids of " leading space").
        Assert.Equal(" leading space", tok.Decode([1, 29871, 8236, 2913]));
        // "▁" alone takes the dummy prefix; after it (even past a control piece) spaces stay.
        Assert.Equal(" leading", tok.Decode([29871, 1, 8236]));
        // After text, a '▁' is a space again.
        Assert.Equal("Hello Hello", tok.Decode([15043, 1, 15043]));
        // <unk> decodes to SentencePiece's unknown surface.
        Assert.Equal(" \u2047 ", tok.Decode([0]));
    }

    [SkippableFact]
    public void Decode_InvalidBytes_BecomeOneReplacementCharacterPerByte_AsInSentencePiece()
    {
        var tok = TokenizerTestData.Llama();
        int Byte(int b) => tok.PieceToId(LlamaTokenizer.BytePiece(b));
        // E2 82 then 'A' piece: the 3-byte sequence is cut short, each byte becomes U+FFFD
        // (.NET's UTF-8 decoder would give a single U+FFFD for the two bytes).
        Assert.Equal("\uFFFD\uFFFDA", tok.Decode([Byte(0xE2), Byte(0x82), tok.PieceToId("A")]));
        // A lone continuation byte, then a complete 🦙.
        Assert.Equal("\uFFFD🦙", tok.Decode([Byte(0x99), Byte(0xF0), Byte(0x9F), Byte(0xA6), Byte(0x99)]));
        // An overlong encoding of '/' (C0 AF) and an encoded surrogate (ED A0 80) are invalid.
        Assert.Equal("\uFFFD\uFFFD", tok.Decode([Byte(0xC0), Byte(0xAF)]));
        Assert.Equal("\uFFFD\uFFFD\uFFFD", tok.Decode([Byte(0xED), Byte(0xA0), Byte(0x80)]));
    }

    [SkippableFact]
    public void Decode_RejectsIdsOutsideTheVocabulary()
    {
        var tok = TokenizerTestData.Llama();
        Assert.Throws<ArgumentOutOfRangeException>(() => tok.Decode([15043, 32000]));
        Assert.Throws<ArgumentOutOfRangeException>(() => tok.Decode([-1]));
    }

    [SkippableFact]
    public void RandomTexts_RoundTrip()
    {
        var tok = TokenizerTestData.Llama();
        foreach (string text in TokenizerTestData.RandomTexts(300, seed: 11))
        {
            string decoded = tok.Decode(tok.Encode(text));
            Assert.True(text == decoded, $"round trip failed for {System.Text.Json.JsonSerializer.Serialize(text)}: {System.Text.Json.JsonSerializer.Serialize(decoded)}");
        }
    }

    [SkippableFact]
    public void Encode_LongText_IsFastAndRoundTrips()
    {
        var tok = TokenizerTestData.Llama();
        string text = File.ReadAllText(SharedData.Require("text/moby-dick.txt"));
        text = text[..Math.Min(text.Length, 400_000)];
        tok.Encode(text[..1000]); // warm-up (JIT)
        var sw = Stopwatch.StartNew();
        int[] ids = tok.Encode(text);
        sw.Stop();
        output.WriteLine($"encoded {text.Length} chars into {ids.Length} tokens in {sw.Elapsed.TotalMilliseconds:F0} ms");
        // One sequence of 400k characters: a quadratic merge loop would take minutes.
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(20), $"encoding {text.Length} chars took {sw.Elapsed}");
        Assert.InRange(ids.Length, text.Length / 8, text.Length / 2);
        Assert.Equal(text, tok.Decode(ids));
    }

    [Fact]
    public void FromVocabulary_ByteFallbackOff_FusesUnknownRuns_AndUsesScores()
    {
        // A toy vocabulary: merges chosen by the merged piece's score, not by list order.
        string[] pieces = ["<unk>", "<s>", "</s>", "▁", "a", "b", "c", "ab", "bc", "▁a", "abc"];
        float[] scores = [0, 0, 0, -10, -10, -10, -10, -5, -1, -8, -2];
        TokenType[] types = [TokenType.Unknown, TokenType.Control, TokenType.Control, .. Enumerable.Repeat(TokenType.Normal, 8)];
        var tok = LlamaTokenizer.FromVocabulary(pieces, scores, types, new TokenizerOptions { ByteFallback = false });
        // "▁abc": candidates ▁a(-8), ab(-5), bc(-1) -> bc first; then ▁a(-8) vs abc(-2) -> abc; then ▁+abc not a piece.
        Assert.Equal([3, 10], tok.Encode("abc"));
        // "▁ab": ▁a(-8) vs ab(-5) -> ab.
        Assert.Equal([3, 7], tok.Encode("ab"));
        // Unknown characters without byte fallback: one <unk> per run, and it decodes to " ⁇ ".
        Assert.Equal([3, 0, 4], tok.Encode("xyz🦙a"));
        Assert.Equal([3, 0, 9, 0], tok.Encode("x a!"));
        Assert.Equal(" \u2047 a", tok.Decode([3, 0, 4]));
    }

    [Fact]
    public void FromVocabulary_UserDefinedSymbols_AreMatchedWholeAndNeverMerged()
    {
        string[] pieces = ["<unk>", "▁", "a", "b", "▁a", "ab", "<sep>", "<0x3C>"];
        float[] scores = [0, -1, -1, -1, -2, -3, 0, 0];
        TokenType[] types = [TokenType.Unknown, TokenType.Normal, TokenType.Normal, TokenType.Normal, TokenType.Normal, TokenType.Normal, TokenType.UserDefined, TokenType.Byte];
        var tok = LlamaTokenizer.FromVocabulary(pieces, scores, types, new TokenizerOptions { BosId = -1, EosId = -1 });
        Assert.Equal([4, 6, 5], tok.Encode("a<sep>ab"));
        Assert.Equal("a<sep>ab", tok.Decode([4, 6, 5]));
        Assert.Contains("vocabulary: the tokenizer has no BOS piece", Assert.Throws<InvalidDataException>(() => tok.Encode("a", addBos: true)).Message);
    }

    [Fact]
    public void FromVocabulary_UnusedPieces_AreFormedButSplitAgainOnOutput()
    {
        // "ab" is UNUSED: merges may build it (and build on it), but it is never emitted itself;
        // SentencePiece re-splits it into the pair that formed it (bpe_model.cc's rev_merge).
        string[] pieces = ["<unk>", "▁", "a", "b", "ab", "abb"];
        float[] scores = [0, -5, -5, -5, -1, -2];
        TokenType[] types = [TokenType.Unknown, TokenType.Normal, TokenType.Normal, TokenType.Normal, TokenType.Unused, TokenType.Normal];
        var tok = LlamaTokenizer.FromVocabulary(pieces, scores, types, new TokenizerOptions { BosId = -1, EosId = -1 });
        Assert.Equal([1, 2, 3], tok.Encode("ab"));
        Assert.Equal([1, 5], tok.Encode("abb"));
        Assert.Equal([1, 5, 1, 2, 3], tok.Encode("abb ab"));
    }

    [Fact]
    public void FromVocabulary_RejectsInconsistentArrays()
    {
        Assert.Throws<ArgumentException>(() => LlamaTokenizer.FromVocabulary(["<unk>", "a"], [0f], [TokenType.Unknown, TokenType.Normal]));
        Assert.Throws<ArgumentException>(() => LlamaTokenizer.FromVocabulary(["a", "b"], [0f, 0f], [TokenType.Normal, TokenType.Normal]));
        Assert.Throws<ArgumentException>(() => LlamaTokenizer.FromVocabulary(["<unk>", "a", "a"], [0f, 0f, 0f], [TokenType.Unknown, TokenType.Normal, TokenType.Normal]));
        Assert.Throws<ArgumentException>(() => LlamaTokenizer.FromVocabulary(["<unk>", "<0xZZ>"], [0f, 0f], [TokenType.Unknown, TokenType.Byte]));
    }

    [Fact]
    public void Normalize_HonoursRemoveExtraWhitespaces()
    {
        string[] pieces = ["<unk>", "▁", "a"];
        var types = new[] { TokenType.Unknown, TokenType.Normal, TokenType.Normal };
        var keep = LlamaTokenizer.FromVocabulary(pieces, [0, 0, 0], types, new TokenizerOptions { BosId = -1, EosId = -1 });
        var remove = LlamaTokenizer.FromVocabulary(pieces, [0, 0, 0], types, new TokenizerOptions { BosId = -1, EosId = -1, RemoveExtraWhitespaces = true });
        Assert.Equal("▁▁▁a▁▁a▁", keep.Normalize("  a  a "));
        Assert.Equal("▁a▁a", remove.Normalize("  a  a "));
        Assert.Equal("", remove.Normalize("   "));
        Assert.Equal("", keep.Normalize(""));
        Assert.Equal("▁▁", keep.Normalize(" "));
        // With remove_extra_whitespaces every leading '▁' of the first piece is dropped when decoding.
        Assert.Equal("a a", remove.Decode([1, 1, 2, 1, 2]));
        Assert.Equal("  a a", keep.Decode([1, 1, 1, 2, 1, 2]));
    }
}
