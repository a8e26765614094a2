// Streaming decode: ids fed one at a time must yield, concatenated, exactly Decode(all ids), and for
// valid text no intermediate output may hold a replacement character or half a surrogate pair
// (byte-fallback characters arrive as 2-4 separate byte pieces).
using System.Text;
using System.Text.Json;
using TinyLlama.Tokenizers;

namespace TinyLlama.Tests.Tokenizers;

public class TokenStreamDecoderTests
{
    /// <summary>Feeds ids one by one; returns every Push output and the Flush output last.</summary>
    private static List<string> Stream(LlamaTokenizer tok, IEnumerable<int> ids)
    {
        var decoder = tok.CreateStreamDecoder();
        var outputs = new List<string>();
        foreach (int id in ids) outputs.Add(decoder.Push(id));
        outputs.Add(decoder.Flush());
        return outputs;
    }

    private static void AssertWholeCharacters(string chunk, string context)
    {
        for (int i = 0; i < chunk.Length; i++)
        {
            char c = chunk[i];
            Assert.True(c != '\uFFFD', $"{context}: intermediate output {JsonSerializer.Serialize(chunk)} holds U+FFFD");
            if (char.IsHighSurrogate(c))
            {
                Assert.True(i + 1 < chunk.Length && char.IsLowSurrogate(chunk[i + 1]), $"{context}: output ends inside a surrogate pair");
                i++;
            }
            else Assert.False(char.IsLowSurrogate(c), $"{context}: lone low surrogate");
        }
    }

    private static void CheckValidText(LlamaTokenizer tok, string text, int[] ids)
    {
        var outputs = Stream(tok, ids);
        string context = JsonSerializer.Serialize(text);
        foreach (string chunk in outputs) AssertWholeCharacters(chunk, context);
        Assert.Equal(tok.Decode(ids), string.Concat(outputs));
        Assert.Equal(text, string.Concat(outputs));
    }

    [SkippableFact]
    public void EveryReferenceCase_StreamsToDecode()
    {
        var tok = TokenizerTestData.Llama();
        foreach (var c in TokenizerTestData.Cases()) CheckValidText(tok, c.Text, c.Ids);
    }

    [SkippableFact]
    public void RandomTexts_StreamToDecode()
    {
        var tok = TokenizerTestData.Llama();
        foreach (string text in TokenizerTestData.RandomTexts(300, seed: 5)) CheckValidText(tok, text, tok.Encode(text, addBos: true, addEos: true));
    }

    [SkippableFact]
    public void Emoji_AppearsOnlyWithItsLastByte()
    {
        var tok = TokenizerTestData.Llama();
        int[] ids = tok.Encode("🦙!"); // ▁, F0 9F A6 99, !
        var outputs = Stream(tok, ids);
        Assert.Equal(["", "", "", "", "🦙", "!", ""], outputs);
    }

    [SkippableFact]
    public void LeadingSpaceRule_MatchesDecode()
    {
        var tok = TokenizerTestData.Llama();
        // <s> first, then "▁Hello": the dummy-prefix space goes; later spaces stay.
        Assert.Equal(["", "Hello", " world", ""], Stream(tok, [1, 15043, 3186]));
        // " leading": "▁" consumes the dummy prefix, so "▁leading" keeps its space.
        Assert.Equal(["", " leading", ""], Stream(tok, [29871, 8236]));
    }

    [SkippableFact]
    public void RandomIdSequences_IncludingInvalidUtf8_StreamToDecode()
    {
        // Invalid byte sequences are final only when a non-byte piece or Flush ends the run; the
        // concatenation must still equal Decode, U+FFFD included.
        var tok = TokenizerTestData.Llama();
        int Byte(int b) => tok.PieceToId(LlamaTokenizer.BytePiece(b));
        int[] pool =
        [
            0, 1, 2, 29871, 15043, 3186, 263, 29889, 259,
            Byte(0x41), Byte(0x80), Byte(0xBF), Byte(0xC3), Byte(0xA9), Byte(0xC0), Byte(0xE2), Byte(0x82), Byte(0xAC),
            Byte(0xED), Byte(0xA0), Byte(0xF0), Byte(0x9F), Byte(0xA6), Byte(0x99), Byte(0xF4), Byte(0x90), Byte(0xF8), Byte(0xFF),
        ];
        var rng = new Random(8);
        for (int trial = 0; trial < 2000; trial++)
        {
            var ids = new int[rng.Next(0, 12)];
            for (int i = 0; i < ids.Length; i++) ids[i] = pool[rng.Next(pool.Length)];
            string expected = tok.Decode(ids);
            string streamed = string.Concat(Stream(tok, ids));
            Assert.True(expected == streamed, $"ids [{string.Join(", ", ids)}]: Decode {JsonSerializer.Serialize(expected)}, stream {JsonSerializer.Serialize(streamed)}");
        }
    }

    [SkippableFact]
    public void Reset_StartsANewSequence()
    {
        var tok = TokenizerTestData.Llama();
        var decoder = tok.CreateStreamDecoder();
        int lead = tok.PieceToId("<0xF0>");
        Assert.Equal("Hello", decoder.Push(15043));
        Assert.Equal("", decoder.Push(lead));
        decoder.Reset();
        // The held byte is gone and the leading-space rule applies again.
        var sb = new StringBuilder();
        sb.Append(decoder.Push(15043)).Append(decoder.Flush());
        Assert.Equal("Hello", sb.ToString());
    }
}
