// ShareGPT / Vicuna v1.1 conversations: the rendered text against a string worked out by hand from
// FastChat's ADD_COLON_TWO rule (sep " ", sep2 "</s>"), the segment tokenisation and its loss mask
// (assistant replies and their EOS only), splitting long conversations at exchange boundaries, system
// turns, role names, and Koala-style quality markers.
using TinyLlama.Training.Data;
using static TinyLlama.Tests.Training.DataTestUtil;

namespace TinyLlama.Tests.Training;

public class DataShareGptTests
{
    private static readonly ChatMessage[] TwoTurns =
    [
        new(ChatRole.User, "Hi"), new(ChatRole.Assistant, "Hello!"),
        new(ChatRole.User, "How are you?"), new(ChatRole.Assistant, "Fine."),
    ];

    private const string TwoTurnsJson =
        "{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Hello!\"}, " +
        "{\"from\": \"human\", \"value\": \"How are you?\"}, {\"from\": \"gpt\", \"value\": \"Fine.\"}]}\n";

    [Fact]
    public void Render_TwoTurns_IsVicunaV11()
    {
        // system + sep, then "USER: m" + sep, "ASSISTANT: r" + sep2, per FastChat's get_prompt.
        const string expected =
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, " +
            "detailed, and polite answers to the user's questions. USER: Hi ASSISTANT: Hello!</s>USER: How are you? ASSISTANT: Fine.</s>";
        Assert.Equal(expected, VicunaTemplate.Render(TwoTurns));
        Assert.Equal("Be brief. USER: Hi ASSISTANT:", VicunaTemplate.GenerationPrompt([new(ChatRole.User, "Hi")], "Be brief."));
    }

    [Fact]
    public void Tokenize_TwoTurns_LossOnRepliesAndEosOnly()
    {
        var data = Parse(TwoTurnsJson, SftFormat.ShareGpt);
        var ex = Assert.Single(data.Examples);
        int[] header = Cat([Bos], Enc(VicunaTemplate.DefaultSystem));
        int[] p1 = Enc("USER: Hi ASSISTANT:"), r1 = Enc("Hello!");
        int[] p2 = Enc("USER: How are you? ASSISTANT:"), r2 = Enc("Fine.");
        Assert.Equal(Cat(header, p1, r1, [Eos], p2, r2, [Eos]), ex.InputIds);
        Assert.Equal(Cat(Masked(header.Length + p1.Length), r1, [Eos], Masked(p2.Length), r2, [Eos]), ex.Labels);
        Assert.Equal(r1.Length + 1 + r2.Length + 1, ex.TargetCount);
        Assert.Equal("data.jsonl:1", ex.Source);
    }

    [SkippableFact]
    public void Tokenize_WithLlamaTokenizer_SegmentsAgreeWithTheRenderedText()
    {
        // The segments joined must equal tokenising the rendered text piece by piece between the
        // "</s>" separators (which become EOS ids), as Llama's Hugging Face tokenizer does.
        var tok = ReferenceTokenizer();
        var ex = Assert.Single(VicunaTemplate.Tokenize(tok, TwoTurns, maxLength: 1024));
        string[] parts = VicunaTemplate.Render(TwoTurns).Split("</s>");
        Assert.Equal(3, parts.Length);
        Assert.Equal("", parts[2]);
        int[] expected = Cat([tok.BosId], tok.Encode(parts[0]), [tok.EosId], tok.Encode(parts[1]), [tok.EosId]);
        Assert.Equal(expected, ex.InputIds);
        // The targets decode to exactly the two replies.
        var targetRuns = new List<string>();
        var run = new List<int>();
        for (int i = 0; i <= ex.Length; i++)
        {
            if (i < ex.Length && ex.Labels[i] != M) { run.Add(ex.Labels[i]); continue; }
            if (run.Count > 0) { Assert.Equal(tok.EosId, run[^1]); targetRuns.Add(tok.Decode(run)); run.Clear(); }
        }
        Assert.Equal(["Hello!", "Fine."], targetRuns);
    }

    [Fact]
    public void EncodePrompt_IsTheTrainingPrefixBeforeTheLastReply()
    {
        var ex = Assert.Single(VicunaTemplate.Tokenize(ByteTokenizer, TwoTurns, maxLength: 4096));
        int[] prompt = VicunaTemplate.EncodePrompt(ByteTokenizer, TwoTurns[..3]);
        Assert.Equal(ex.InputIds[..prompt.Length], prompt);
        Assert.Equal(Enc("Fine."), ex.InputIds[prompt.Length..^1]);
    }

    [Fact]
    public void LongConversation_SplitsAtExchangeBoundaries_EachPieceWithHeader()
    {
        string system = "S";
        var turns = new ChatMessage[]
        {
            new(ChatRole.User, "aaaa"), new(ChatRole.Assistant, "bbbb"),
            new(ChatRole.User, "cccc"), new(ChatRole.Assistant, "dddd"),
            new(ChatRole.User, "eeee"), new(ChatRole.Assistant, "ffff"),
        };
        int[] header = Cat([Bos], Enc(system));
        int[][] exchange = [.. Enumerable.Range(0, 3).Select(k => Cat(Enc($"USER: {turns[2 * k].Content} ASSISTANT:"), Enc(turns[2 * k + 1].Content), [Eos]))];
        // Room for the header and two exchanges, not three.
        int maxLength = header.Length + exchange[0].Length + exchange[1].Length;
        var examples = VicunaTemplate.Tokenize(ByteTokenizer, turns, maxLength, system, source: "c.json:4");
        Assert.Equal(2, examples.Count);
        Assert.Equal(Cat(header, exchange[0], exchange[1]), examples[0].InputIds);
        Assert.Equal(Cat(header, exchange[2]), examples[1].InputIds);
        int[] p3 = Enc("USER: eeee ASSISTANT:");
        Assert.Equal(Cat(Masked(header.Length + p3.Length), Enc("ffff"), [Eos]), examples[1].Labels);
        Assert.All(examples, e => Assert.Equal("c.json:4", e.Source));
        Assert.All(examples, e => Assert.True(e.Length <= maxLength));

        // Through the loader: the split is counted.
        string json = "{\"system\": \"S\", \"conversations\": [" + string.Join(", ", turns.Select(t =>
            $"{{\"from\": \"{(t.Role == ChatRole.User ? "human" : "gpt")}\", \"value\": \"{t.Content}\"}}")) + "]}";
        var data = Parse(json, SftFormat.ShareGpt, maxLength);
        Assert.Equal(2, data.Examples.Count);
        Assert.Equal(1, data.SplitCount);
        Assert.Equal(0, data.TruncatedCount);
    }

    [Fact]
    public void SingleExchangeTooLong_IsTruncated_AndNextExchangeStartsAgain()
    {
        var turns = new ChatMessage[]
        {
            new(ChatRole.User, "q"), new(ChatRole.Assistant, new string('x', 50)),
            new(ChatRole.User, "r"), new(ChatRole.Assistant, "y"),
        };
        int[] header = Cat([Bos], Enc("S"));
        int[] p1 = Enc("USER: q ASSISTANT:");
        int maxLength = header.Length + p1.Length + 10;
        var examples = VicunaTemplate.Tokenize(ByteTokenizer, turns, maxLength, "S");
        Assert.Equal(2, examples.Count);
        Assert.Equal(maxLength, examples[0].Length);
        // The reply's first 10 tokens survive: its dummy-prefix '▁' and nine 'x'.
        Assert.Equal(Cat(Masked(header.Length + p1.Length), [Space], Enumerable.Repeat(3 + 'x', 9).ToArray()), examples[0].Labels);
        Assert.Equal(Cat(header, Enc("USER: r ASSISTANT:"), Enc("y"), [Eos]), examples[1].InputIds);
    }

    [Fact]
    public void SystemTurn_ReplacesDefault_TopLevelSystemToo_DefaultOtherwise()
    {
        var withTurn = Parse("{\"conversations\": [{\"from\": \"system\", \"value\": \"Be terse.\"}, {\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Yo\"}]}", SftFormat.ShareGpt);
        Assert.Equal(Cat([Bos], Enc("Be terse."), Enc("USER: Hi ASSISTANT:"), Enc("Yo"), [Eos]), withTurn.Examples[0].InputIds);

        var topLevel = Parse("{\"system\": \"Be terse.\", \"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Yo\"}]}", SftFormat.ShareGpt);
        Assert.Equal(withTurn.Examples[0].InputIds, topLevel.Examples[0].InputIds);

        var byDefault = Parse("{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Yo\"}]}", SftFormat.ShareGpt);
        Assert.Equal(Cat([Bos], Enc(VicunaTemplate.DefaultSystem)), byDefault.Examples[0].InputIds[..(1 + Enc(VicunaTemplate.DefaultSystem).Length)]);

        var optionDefault = Parse("{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Yo\"}]}", SftFormat.ShareGpt, defaultSystem: "Be terse.");
        Assert.Equal(withTurn.Examples[0].InputIds, optionDefault.Examples[0].InputIds);

        string late = ErrorOf("{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"system\", \"value\": \"x\"}]}", SftFormat.ShareGpt);
        Assert.Equal("data.jsonl:1: field \"conversations[1].from\" is a system turn after the conversation started (only the first turns may be system turns)", late);
    }

    [Fact]
    public void RoleNames_UserAssistantAccepted_LeadingModelTurnSkipped_TrailingQuestionDropped()
    {
        var a = Parse(TwoTurnsJson, SftFormat.ShareGpt);
        var b = Parse("{\"conversations\": [{\"from\": \"gpt\", \"value\": \"Welcome\"}, {\"from\": \"user\", \"value\": \"Hi\"}, {\"from\": \"assistant\", \"value\": \"Hello!\"}, " +
                      "{\"role\": \"user\", \"content\": \"How are you?\"}, {\"role\": \"assistant\", \"content\": \"Fine.\"}, {\"from\": \"human\", \"value\": \"Bye?\"}]}", SftFormat.ShareGpt);
        Assert.Equal(a.Examples[0].InputIds, b.Examples[0].InputIds);
        Assert.Equal(a.Examples[0].Labels, b.Examples[0].Labels);

        // Nothing answered: no example, counted as dropped.
        var c = Parse("{\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}]}", SftFormat.ShareGpt);
        Assert.Empty(c.Examples);
        Assert.Equal(1, c.DroppedCount);
    }

    [Fact]
    public void AutoFormat_DetectsEachRecord()
    {
        var data = Parse("{\"instruction\": \"Q\", \"output\": \"a\"}\n" + TwoTurnsJson, SftFormat.Auto);
        Assert.Equal(AlpacaTemplate.Tokenize(ByteTokenizer, "Q", null, "a").InputIds, data.Examples[0].InputIds);
        Assert.Equal(VicunaTemplate.Tokenize(ByteTokenizer, TwoTurns, 4096)[0].InputIds, data.Examples[1].InputIds);
    }

    [Fact]
    public void Quality_MarkersPrefixTheSystemLine_InferenceUsesGood()
    {
        Assert.Equal("[quality: good] Sys", VicunaTemplate.SystemLine("Sys", SftQuality.Good));
        Assert.Equal("[quality: bad] Sys", VicunaTemplate.SystemLine("Sys", SftQuality.Bad));
        Assert.StartsWith("[quality: good] A chat between", VicunaTemplate.Render(TwoTurns, null, QualityTags.ForInference));

        string conv = "\"conversations\": [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Yo\"}]";
        var data = Parse($"{{\"quality\": \"good\", {conv}}}\n{{\"quality\": \"bad\", {conv}}}\n{{{conv}}}\n", SftFormat.ShareGpt);
        int[] Header(string line) => Cat([Bos], Enc(line));
        Assert.Equal(Header(QualityTags.Good + " " + VicunaTemplate.DefaultSystem), data.Examples[0].InputIds[..Header(QualityTags.Good + " " + VicunaTemplate.DefaultSystem).Length]);
        Assert.Equal(Header(QualityTags.Bad + " " + VicunaTemplate.DefaultSystem), data.Examples[1].InputIds[..Header(QualityTags.Bad + " " + VicunaTemplate.DefaultSystem).Length]);
        Assert.Equal(Cat(Header(VicunaTemplate.DefaultSystem), Enc("USER: Hi ASSISTANT:"), Enc("Yo"), [Eos]), data.Examples[2].InputIds);
        // The markers never carry loss: every example learns just "Yo" and EOS.
        Assert.All(data.Examples, e => Assert.Equal(Enc("Yo").Length + 1, e.TargetCount));
        // Inference prompt with the good marker starts like the good training example.
        int[] prompt = VicunaTemplate.EncodePrompt(ByteTokenizer, [new(ChatRole.User, "Hi")], null, QualityTags.ForInference);
        Assert.Equal(data.Examples[0].InputIds[..prompt.Length], prompt);
    }
}
