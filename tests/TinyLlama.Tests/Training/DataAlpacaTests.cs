// Alpaca records: the prompt text, the token ids against the reference (expected.json -> alpaca_tokens,
// produced from sft_sample.json by the reference implementation), the label mask, truncation, JSON
// array versus JSON Lines, and Koala-style quality markers.
using System.Text.Json;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Training.Data;
using static TinyLlama.Tests.Training.DataTestUtil;

namespace TinyLlama.Tests.Training;

public class DataAlpacaTests
{
    [Fact]
    public void Prompt_Templates_AreExactlyAlpacas()
    {
        Assert.Equal(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
            "### Instruction:\nName a color.\n\n### Response:",
            AlpacaTemplate.Prompt("Name a color.", ""));
        Assert.Equal(AlpacaTemplate.Prompt("Name a color.", ""), AlpacaTemplate.Prompt("Name a color.", null));
        Assert.Equal(
            "Below is an instruction that describes a task, paired with an input that provides further context. " +
            "Write a response that appropriately completes the request.\n\n" +
            "### Instruction:\nAdd them.\n\n### Input:\n1 and 2\n\n### Response:",
            AlpacaTemplate.Prompt("Add them.", "1 and 2"));
    }

    [SkippableFact]
    public void Tokens_MatchReference_IdsAndPromptLengths()
    {
        var tok = ReferenceTokenizer();
        string samplePath = SharedData.Require("tiny-random-llama/sft_sample.json");
        using var expected = JsonDocument.Parse(File.ReadAllText(SharedData.Require("tiny-random-llama/expected.json")));
        var reference = expected.RootElement.GetProperty("alpaca_tokens").EnumerateArray().ToList();

        var data = SftDataset.Load(samplePath, "alpaca", tok, maxLength: 2048);
        Assert.Equal(2, data.RecordCount);
        Assert.Equal(reference.Count, data.Examples.Count);
        for (int r = 0; r < reference.Count; r++)
        {
            int[] ids = reference[r].GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            int promptLen = reference[r].GetProperty("prompt_len").GetInt32();
            var ex = data.Examples[r];
            Assert.Equal(ids, ex.InputIds);
            // The full label array: -100 on exactly the first prompt_len positions, the ids after.
            int[] labels = ids.Select((id, i) => i < promptLen ? M : id).ToArray();
            Assert.Equal(labels, ex.Labels);
            Assert.Equal(ids.Length - promptLen, ex.TargetCount);
        }
        // Sources name the file and the line each record starts on (records open on lines 2 and 7).
        Assert.Equal($"{samplePath}:2", data.Examples[0].Source);
        Assert.Equal($"{samplePath}:7", data.Examples[1].Source);
    }

    [SkippableFact]
    public void Tokens_PromptLengthIsOnePlusEncodedPrompt()
    {
        var tok = ReferenceTokenizer();
        var ex = AlpacaTemplate.Tokenize(tok, "Add the two numbers.", "17 and 25", "17 + 25 = 42");
        int promptLen = 1 + tok.Encode(AlpacaTemplate.Prompt("Add the two numbers.", "17 and 25")).Length;
        Assert.Equal(63, promptLen); // expected.json's prompt_len for this record
        Assert.Equal(AlpacaTemplate.EncodePrompt(tok, "Add the two numbers.", "17 and 25"), ex.InputIds[..promptLen]);
    }

    [Fact]
    public void Labels_MaskExactlyThePrompt_AndKeepResponseAndEos()
    {
        var ex = AlpacaTemplate.Tokenize(ByteTokenizer, "Say hi.", null, "hi");
        string prompt = AlpacaTemplate.Prompt("Say hi.");
        int[] promptIds = Enc(prompt);
        int[] fullIds = Enc(prompt + "hi");
        Assert.Equal(Cat([Bos], fullIds, [Eos]), ex.InputIds);
        // Prompt: 1 + |encode(prompt)| masked; then 'h', 'i', EOS are targets. A change to any prompt
        // label, or a target turned into -100, breaks this equality.
        Assert.Equal(Cat(Masked(1 + promptIds.Length), [3 + 'h', 3 + 'i', Eos]), ex.Labels);
        Assert.Equal(3, ex.TargetCount);
    }

    [Fact]
    public void Truncation_CutsToMaxLength_AndDropsRecordsWithoutTarget()
    {
        string prompt = AlpacaTemplate.Prompt("Say hi.");
        int promptLen = 1 + Enc(prompt).Length;
        string jsonl = "{\"instruction\": \"Say hi.\", \"output\": \"hello\"}\n";
        var full = Parse(jsonl, SftFormat.Alpaca);
        Assert.Equal(promptLen + 5 + 1, full.Examples[0].Length);

        var cut = Parse(jsonl, SftFormat.Alpaca, maxLength: promptLen + 2);
        Assert.Equal(1, cut.TruncatedCount);
        Assert.Equal(promptLen + 2, cut.Examples[0].Length);
        Assert.Equal(Cat(Masked(promptLen), [3 + 'h', 3 + 'e']), cut.Examples[0].Labels);

        var none = Parse(jsonl, SftFormat.Alpaca, maxLength: promptLen);
        Assert.Empty(none.Examples);
        Assert.Equal(1, none.DroppedCount);
        Assert.Contains("1 dropped", none.Summary());
    }

    [Fact]
    public void JsonArrayAndJsonLines_GiveTheSameExamples_WithRecordLines()
    {
        string array = "[\n  {\"instruction\": \"A\", \"output\": \"x\"},\n\n  {\n    \"instruction\": \"B\",\n    \"input\": \"in\",\n    \"output\": \"y\"\n  }\n]\n";
        string lines = "{\"instruction\": \"A\", \"output\": \"x\"}\n\n{\"instruction\": \"B\", \"input\": \"in\", \"output\": \"y\"}\n";
        var a = Parse(array, SftFormat.Alpaca, name: "a.json");
        var l = Parse(lines, SftFormat.Alpaca, name: "l.jsonl");
        Assert.Equal(2, a.Examples.Count);
        for (int i = 0; i < 2; i++)
        {
            Assert.Equal(l.Examples[i].InputIds, a.Examples[i].InputIds);
            Assert.Equal(l.Examples[i].Labels, a.Examples[i].Labels);
        }
        Assert.Equal(["a.json:2", "a.json:4"], a.Examples.Select(e => e.Source));
        Assert.Equal(["l.jsonl:1", "l.jsonl:3"], l.Examples.Select(e => e.Source));
        // The second record has an input, so it used the "with input" prompt.
        Assert.Equal(AlpacaTemplate.Tokenize(ByteTokenizer, "B", "in", "y").InputIds, a.Examples[1].InputIds);
    }

    [Fact]
    public void ByteOrderMarkAndCrlfLineEnds_AreAccepted()
    {
        string lines = "{\"instruction\": \"A\", \"output\": \"x\"}\r\n\r\n{\"instruction\": \"B\", \"output\": \"y\"}\r\n";
        var plain = Parse(lines, SftFormat.Alpaca);
        var bom = Parse("\uFEFF" + lines, SftFormat.Alpaca);
        Assert.Equal(["data.jsonl:1", "data.jsonl:3"], bom.Examples.Select(e => e.Source));
        Assert.Equal(plain.Examples[1].InputIds, bom.Examples[1].InputIds);
        var array = Parse("\uFEFF[\r\n{\"instruction\": \"A\", \"output\": \"x\"},\r\n{\"instruction\": \"B\", \"output\": \"y\"}]", SftFormat.Alpaca, name: "a.json");
        Assert.Equal(["a.json:2", "a.json:3"], array.Examples.Select(e => e.Source));
    }

    [Fact]
    public void Quality_GoodAndBad_PutTheirMarkerBeforeThePrompt()
    {
        string plain = AlpacaTemplate.Prompt("Q", "");
        Assert.Equal("[quality: good] " + plain, AlpacaTemplate.Prompt("Q", "", SftQuality.Good));
        Assert.Equal("[quality: bad] " + plain, AlpacaTemplate.Prompt("Q", "", SftQuality.Bad));

        var data = Parse(
            "{\"instruction\": \"Q\", \"output\": \"a\", \"quality\": \"good\"}\n" +
            "{\"instruction\": \"Q\", \"output\": \"a\", \"quality\": \"bad\"}\n" +
            "{\"instruction\": \"Q\", \"output\": \"a\"}\n", SftFormat.Alpaca);
        Assert.Equal(Cat([Bos], Enc(QualityTags.Good + " " + plain + "a"), [Eos]), data.Examples[0].InputIds);
        Assert.Equal(Cat([Bos], Enc(QualityTags.Bad + " " + plain + "a"), [Eos]), data.Examples[1].InputIds);
        Assert.Equal(Cat([Bos], Enc(plain + "a"), [Eos]), data.Examples[2].InputIds);
        // The marker is part of the prompt: masked, and the targets are still just "a" and EOS.
        Assert.All(data.Examples, e => Assert.Equal(2, e.TargetCount));
    }

    [Fact]
    public void Quality_InferenceUsesTheGoodMarker()
    {
        Assert.Equal(SftQuality.Good, QualityTags.ForInference);
        Assert.Equal(QualityTags.Good, QualityTags.Tag(QualityTags.ForInference));
        Assert.NotEqual(QualityTags.Good, QualityTags.Bad);
        Assert.StartsWith("[quality: good] Below is", AlpacaTemplate.Prompt("Q", null, QualityTags.ForInference));
        Assert.Null(QualityTags.Tag(SftQuality.Unrated));
    }
}
