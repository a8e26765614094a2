// ChatSession: a conversation kept in one KV cache. A later turn must prefill only what the cache lacks
// (counted), and its greedy answer must equal a from-scratch generation over the whole formatted
// history (TextGenerator on a fresh cache): cached positions, RoPE offsets and the chunked prefill all
// have to be right for the two to agree. Overflow drops the oldest exchanges and re-prefills the rest;
// Reset starts over; the stop-text filter never shows the marker. A small random model and the byte
// tokenizer (one id per character) keep this free of shared data.
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Model;
using TinyLlama.Training.Data;
using static TinyLlama.Tests.Training.DataTestUtil;

namespace TinyLlama.Tests.Generation;

public class ChatSessionTests
{
    private const int MaxAnswer = 8;

    private static LlamaForCausalLM Model(int maxPos = 160)
    {
        var model = new LlamaForCausalLM(LlamaTests.Tiny(vocab: 260, hidden: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 40, maxPos: maxPos), new Generator(11));
        model.Eval();
        return model;
    }

    private static int[] FromScratch(LlamaForCausalLM model, int[] history, int maxTokens = MaxAnswer) =>
        TextGenerator.Generate(model, history, maxTokens, SamplingOptions.Greedy, model.Config.EosTokenIds.Append(Eos).ToArray(), useCpuDecoder: false).ToArray();

    private static int[] Closed(ChatTemplate template, ChatReply reply) => [.. reply.Ids, .. template.EncodeReplyEnd(reply.StopReason)];

    [Fact]
    public void ALaterTurnPrefillsOnlyItsOwnTokensAndAnswersAsFromScratch()
    {
        var model = Model();
        var template = ChatTemplates.Create("vicuna", ByteTokenizer, "Be brief.");
        using var chat = new ChatSession(model, template, SamplingOptions.Greedy, MaxAnswer);

        var r1 = chat.Respond("Hi");
        int[] prompt1 = template.EncodeConversation([], "Hi");
        Assert.Equal(prompt1.Length, r1.PrefilledTokens);
        Assert.Equal(FromScratch(model, prompt1), r1.Ids);
        int cachedAfter1 = chat.CachedTokens;
        Assert.Equal(prompt1.Length + r1.Ids.Count - 1, cachedAfter1); // the last answer id is sampled, not yet fed

        var r2 = chat.Respond("How are you?");
        int[] prompt2 = template.EncodeConversation([("Hi", Closed(template, r1))], "How are you?");
        // Only the last answer id, the reply's end and the new user turn: the rest was cached.
        int own = 1 + template.EncodeReplyEnd(r1.StopReason).Length + template.EncodeUserTurn("How are you?", first: false).Length;
        Assert.Equal(own, r2.PrefilledTokens);
        Assert.Equal(prompt2.Length - cachedAfter1, r2.PrefilledTokens);
        Assert.True(r2.PrefilledTokens < prompt2.Length / 2, $"{r2.PrefilledTokens} of {prompt2.Length}");
        Assert.Equal(prompt1.Length + own, chat.PrefilledTokens);
        Assert.Equal(prompt2, chat.History.Take(prompt2.Length).ToArray());
        Assert.Equal(FromScratch(model, prompt2), r2.Ids);

        var r3 = chat.Respond("Tell me more.");
        int[] prompt3 = template.EncodeConversation([("Hi", Closed(template, r1)), ("How are you?", Closed(template, r2))], "Tell me more.");
        Assert.Equal(FromScratch(model, prompt3), r3.Ids);
        Assert.Equal(3, chat.Exchanges);
        Assert.Equal(0, r3.DroppedTurns);
    }

    [Fact]
    public void OverflowDropsTheOldestExchangesAndKeepsTheStart()
    {
        var model = Model();
        // Capacity 64, reserve 8: each "raw" exchange here is 11 message ids + up to 8 answer ids.
        var template = ChatTemplates.Create("raw", ByteTokenizer);
        using var chat = new ChatSession(model, template, SamplingOptions.Greedy, MaxAnswer, contextSize: 64);
        var trims = new List<int>();
        chat.ContextTrimmed += trims.Add;
        var exchanges = new List<(string, int[])>();
        ChatReply? trimmed = null;
        for (int turn = 0; turn < 8 && trimmed is null; turn++)
        {
            string message = $"message {turn:D2}";
            int before = chat.Exchanges;
            var reply = chat.Respond(message);
            if (reply.DroppedTurns > 0)
            {
                trimmed = reply;
                Assert.Equal([reply.DroppedTurns], trims);
                Assert.Equal(before + 1 - reply.DroppedTurns, chat.Exchanges);
                // The kept history starts over at the conversation start (BOS) and was prefilled whole.
                var kept = exchanges.Skip(reply.DroppedTurns).ToList();
                int[] prompt = template.EncodeConversation(kept, message);
                Assert.Equal(prompt.Length, reply.PrefilledTokens);
                Assert.Equal(Bos, chat.History[0]);
                Assert.Equal(prompt, chat.History.Take(prompt.Length).ToArray());
                Assert.True(prompt.Length + chat.AnswerReserve <= chat.Capacity);
                Assert.Equal(FromScratch(model, prompt), reply.Ids);
            }
            else Assert.Empty(trims);
            exchanges.Add((message, Closed(template, reply)));
            Assert.True(chat.CachedTokens <= chat.Capacity);
        }
        Assert.NotNull(trimmed);
    }

    [Fact]
    public void ResetStartsTheConversationOver()
    {
        var model = Model();
        var template = ChatTemplates.Create("alpaca", ByteTokenizer, "Answer.");
        using var chat = new ChatSession(model, template, SamplingOptions.Greedy, MaxAnswer);
        var first = chat.Respond("Hi");
        chat.Respond("Again");
        chat.Reset();
        Assert.Equal(0, chat.CachedTokens);
        Assert.Empty(chat.History);
        Assert.Equal(0, chat.Exchanges);
        var again = chat.Respond("Hi");
        Assert.Equal(first.PrefilledTokens, again.PrefilledTokens);
        Assert.Equal(first.Ids, again.Ids);
        Assert.Equal(first.Text, again.Text);
    }

    [Fact]
    public void MaxTokensCancellationAndOverlongMessages()
    {
        var model = Model(maxPos: 40);
        var template = ChatTemplates.Create("raw", ByteTokenizer);
        using var chat = new ChatSession(model, template, SamplingOptions.Greedy, maxAnswerTokens: 3);
        var reply = chat.Respond("abc");
        Assert.True(reply.StopReason == ChatStopReason.MaxTokens ? reply.Ids.Count == 3 : reply.StopReason == ChatStopReason.EndOfSequence,
            $"{reply.StopReason} after {reply.Ids.Count} ids");

        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        var none = chat.Respond("def", cancel: cancelled.Token);
        Assert.Equal(ChatStopReason.Cancelled, none.StopReason);
        Assert.Empty(none.Ids);
        Assert.Equal("", none.Text);

        // 1 (BOS) + 41 ids cannot fit 40 positions: refused, and the conversation is untouched.
        var history = chat.History.ToArray();
        var e = Assert.Throws<ArgumentException>(() => chat.Respond(new string('x', 40)));
        Assert.Contains("context holds 40", e.Message);
        Assert.Equal(history, chat.History.ToArray());
        Assert.Throws<ArgumentException>(() => new ChatSession(model, template, SamplingOptions.Greedy, contextSize: 41));
        Assert.Throws<ArgumentException>(() => new ChatSession(model, template, SamplingOptions.Greedy, maxAnswerTokens: 0));
    }

    [Fact]
    public void StreamedTextAndTheReplyTextAgree()
    {
        var model = Model();
        using var chat = new ChatSession(model, ChatTemplates.Create("vicuna", ByteTokenizer, "Be brief."), SamplingOptions.Greedy, MaxAnswer);
        var streamed = new System.Text.StringBuilder();
        var reply = chat.Respond("Hi", t => streamed.Append(t));
        Assert.Equal(reply.Text, streamed.ToString());
        var ids = reply.StopReason == ChatStopReason.EndOfSequence ? reply.Ids.Take(reply.Ids.Count - 1) : reply.Ids;
        Assert.Equal(ByteTokenizer.Decode(ids), reply.Text);
    }

    [Fact]
    public void APossibleStartOfTheStopTextIsHeldBackUntilItIsDecided()
    {
        var shown = new System.Text.StringBuilder();
        var filter = new StopTextFilter(["<|im_end|>"], t => shown.Append(t));
        Assert.False(filter.Push("ab<|im"));
        Assert.Equal("ab", shown.ToString());
        Assert.False(filter.Push("x"));
        Assert.Equal("ab<|imx", shown.ToString());
        Assert.False(filter.Push(" <"));
        Assert.Equal("ab<|imx ", shown.ToString());
        filter.Finish("");
        Assert.Equal("ab<|imx <", shown.ToString());
    }

    [Theory]
    [InlineData(new[] { "Hel", "lo <|im", "_end|> more" }, "Hello ", true)]
    [InlineData(new[] { "a<", "|im_", "end", "|>" }, "a", true)]
    [InlineData(new[] { "<|im", "x", " <|im_en" }, "<|imx <|im_en", false)] // held back until the answer ends
    [InlineData(new[] { "<|im_end|>" }, "", true)]
    public void TheStopTextIsNeverShown(string[] pieces, string expectedText, bool stops)
    {
        var shown = new System.Text.StringBuilder();
        var filter = new StopTextFilter(["<|im_end|>"], t => shown.Append(t));
        bool stopped = false;
        foreach (var piece in pieces)
        {
            Assert.DoesNotContain("<|im_end|>", shown.ToString());
            if (filter.Push(piece)) { stopped = true; break; }
        }
        if (!stopped) filter.Finish("");
        Assert.Equal(stops, stopped);
        Assert.Equal(expectedText, shown.ToString());
        Assert.Equal(expectedText, filter.Text);
    }
}
