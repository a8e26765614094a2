// Reading preference pairs (JSON Lines and a JSON array, with file:line errors for a missing or
// non-string field) and tokenising them with the byte tokenizer of the SFT data tests, whose encoding is
// known by hand: BOS + prompt + response + EOS with the prompt masked, truncation counted, and pairs
// whose response is cut away entirely dropped and counted.
using System.Text;
using TinyLlama.Training.Data;
using TinyLlama.Training.Preferences;
using static TinyLlama.Tests.Training.DataTestUtil;

namespace TinyLlama.Tests.Preferences;

public class PreferenceDataTests
{
    private static List<PreferencePair> Parse(string text, string name = "pairs.jsonl") => PreferenceData.Parse(Encoding.UTF8.GetBytes(text), name);

    [Fact]
    public void ReadsJsonLinesAndArrays()
    {
        var lines = Parse("{\"prompt\": \"Q\", \"chosen\": \" yes\", \"rejected\": \" no\"}\n\n{\"prompt\": \"R\", \"chosen\": \"a\", \"rejected\": \"b\", \"extra\": 1}\n");
        Assert.Equal([new PreferencePair("Q", " yes", " no", "pairs.jsonl:1"), new PreferencePair("R", "a", "b", "pairs.jsonl:3")], lines);
        var array = Parse("[\n {\"prompt\": \"Q\", \"chosen\": \"c\", \"rejected\": \"r\"},\n {\"prompt\": \"P\",\n  \"chosen\": \"d\", \"rejected\": \"s\"}\n]", "pairs.json");
        Assert.Equal(["pairs.json:2", "pairs.json:3"], array.Select(p => p.Source));
        Assert.Equal("d", array[1].Chosen);
    }

    [Theory]
    [InlineData("{\"prompt\": \"Q\", \"chosen\": \"c\"}", "pairs.jsonl:2: field \"rejected\" is missing")]
    [InlineData("{\"prompt\": \"Q\", \"chosen\": 3, \"rejected\": \"r\"}", "pairs.jsonl:2: field \"chosen\" must be a string, not a number")]
    [InlineData("{\"prompt\": null, \"chosen\": \"c\", \"rejected\": \"r\"}", "pairs.jsonl:2: field \"prompt\" must be a string, not null")]
    [InlineData("[1]", "pairs.jsonl:2: a record must be a JSON object, not an array")]
    [InlineData("{\"prompt\": \"Q\",", "pairs.jsonl:2: malformed JSON")]
    public void BadRecordsNameFileLineAndField(string second, string expected)
    {
        var e = Assert.Throws<InvalidDataException>(() => Parse("{\"prompt\": \"Q\", \"chosen\": \"c\", \"rejected\": \"r\"}\n" + second + "\n"));
        Assert.StartsWith(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void MissingFileIsNamed()
    {
        var e = Assert.Throws<FileNotFoundException>(() => PreferenceData.Read("/nonexistent/pairs.jsonl"));
        Assert.Contains("/nonexistent/pairs.jsonl", e.Message);
    }

    [Fact]
    public void TokenisesBothSidesWithThePromptMasked()
    {
        var result = PreferenceData.Tokenize([new PreferencePair("Hi", "ab", "c", "f:1")], ByteTokenizer, 64);
        var pair = Assert.Single(result.Pairs);
        int[] prompt = Enc("Hi");
        Assert.Equal(Cat([Bos], Enc("Hiab"), [Eos]), pair.Chosen.InputIds);
        Assert.Equal(Cat(Masked(1 + prompt.Length), Enc("Hiab")[prompt.Length..], [Eos]), pair.Chosen.Labels);
        Assert.Equal(Cat([Bos], Enc("Hic"), [Eos]), pair.Rejected.InputIds);
        Assert.Equal(2, pair.Rejected.TargetCount); // "c" and EOS
        Assert.Equal((1, 0, 0), (result.Records, result.Truncated, result.Dropped));
    }

    [Fact]
    public void TruncationIsCountedAndPairsWithoutAResponseTokenAreDropped()
    {
        // "Hi" is 1 + 3 tokens with BOS ('▁', 'H', 'i'); maxLength 5 keeps one response token, 4 keeps none.
        PreferencePair[] pairs = [new("Hi", "abc", "d", "f:1"), new("Hi there", "x", "y", "f:2")];
        var five = PreferenceData.Tokenize(pairs, ByteTokenizer, 5);
        Assert.Equal((2, 2, 1), (five.Records, five.Truncated, five.Dropped));
        var kept = Assert.Single(five.Pairs);
        Assert.Equal("f:1", kept.Source);
        Assert.Equal(5, kept.Chosen.Length);
        Assert.Equal(1, kept.Chosen.TargetCount);
        var four = PreferenceData.Tokenize(pairs, ByteTokenizer, 4);
        Assert.Empty(four.Pairs);
        Assert.Equal(2, four.Dropped);
        Assert.Throws<ArgumentException>(() => new PreferenceDataLoader(four.Pairs, 1, false, 0));
    }
}
