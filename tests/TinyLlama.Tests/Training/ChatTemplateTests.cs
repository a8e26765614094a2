// The chat formats against the training templates they must agree with (Alpaca's prompt, Vicuna's
// EncodePrompt) and against hand-written ChatML and raw texts, on the byte tokenizer (one id per
// character, so every expectation is worked out independently by DataTestUtil.Enc).
using TinyLlama.Generation;
using TinyLlama.Training.Data;
using static TinyLlama.Tests.Training.DataTestUtil;

namespace TinyLlama.Tests.Training;

public class ChatTemplateTests
{
    [Fact]
    public void AlpacaFirstTurnIsTheTrainingPromptAndLaterTurnsRepeatTheInstructionBlock()
    {
        var alpaca = ChatTemplates.Create("alpaca", ByteTokenizer);
        Assert.Equal(AlpacaTemplate.EncodePrompt(ByteTokenizer, "Name a color."), alpaca.EncodeConversation([], "Name a color."));
        Assert.Equal(Enc("### Instruction:\nAnd another.\n\n### Response:"), alpaca.EncodeUserTurn("And another.", first: false));
        var custom = ChatTemplates.Create("alpaca", ByteTokenizer, "You are terse.");
        Assert.Equal(Enc("You are terse.\n\n### Instruction:\nHi\n\n### Response:"), custom.EncodeUserTurn("Hi", first: true));
        // Replies end in EOS as in training: added unless the model produced it.
        Assert.Equal(new[] { Eos }, alpaca.EncodeReplyEnd(ChatStopReason.MaxTokens));
        Assert.Equal(new[] { Eos }, alpaca.EncodeReplyEnd(ChatStopReason.Cancelled));
        Assert.Empty(alpaca.EncodeReplyEnd(ChatStopReason.EndOfSequence));
        Assert.Null(alpaca.StopText);
    }

    [Fact]
    public void VicunaConversationIsVicunaTemplatesEncodePrompt()
    {
        var vicuna = ChatTemplates.Create("vicuna", ByteTokenizer, "Be brief.");
        ChatMessage[] history = [new(ChatRole.User, "Hi"), new(ChatRole.Assistant, "Hello!"), new(ChatRole.User, "How are you?")];
        int[] reply = [.. Enc("Hello!"), Eos];
        Assert.Equal(VicunaTemplate.EncodePrompt(ByteTokenizer, history, "Be brief."), vicuna.EncodeConversation([("Hi", reply)], "How are you?"));
        Assert.Equal(Cat([Bos], Enc("Be brief.")), vicuna.EncodeStart());
        Assert.Equal(Cat([Bos], Enc(VicunaTemplate.DefaultSystem)), ChatTemplates.Create("vicuna", ByteTokenizer).EncodeStart());
        Assert.Equal(new[] { Eos }, vicuna.EncodeReplyEnd(ChatStopReason.MaxTokens));
    }

    [Fact]
    public void ChatMlFramesEachMessageAndStopsAtImEnd()
    {
        var chatml = ChatTemplates.Create("chatml", ByteTokenizer, "Be brief.");
        Assert.Equal(Cat([Bos], Enc("<|im_start|>system\nBe brief.<|im_end|>\n")), chatml.EncodeStart());
        Assert.Equal(Enc("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), chatml.EncodeUserTurn("Hi", first: true));
        Assert.Equal("<|im_end|>", chatml.StopText);
        Assert.Equal(Enc("\n"), chatml.EncodeReplyEnd(ChatStopReason.StopText));
        Assert.Equal(Enc("<|im_end|>\n"), chatml.EncodeReplyEnd(ChatStopReason.MaxTokens));
        Assert.Equal(new[] { Bos }, ChatTemplates.Create("chatml", ByteTokenizer).EncodeStart());
    }

    [Fact]
    public void RawIsTheTextAsTyped()
    {
        var raw = ChatTemplates.Create("raw", ByteTokenizer);
        Assert.Equal(Cat([Bos], Enc("Once upon"), [7, 8], Enc(" a time")), raw.EncodeConversation([("Once upon", [7, 8])], " a time"));
        Assert.Empty(raw.EncodeReplyEnd(ChatStopReason.MaxTokens));
        Assert.Equal(Cat([Bos], Enc("Story:")), ChatTemplates.Create("raw", ByteTokenizer, "Story:").EncodeStart());
    }

    [Fact]
    public void UnknownTemplateNamesTheChoices()
    {
        var e = Assert.Throws<ArgumentException>(() => ChatTemplates.Create("llama3", ByteTokenizer));
        Assert.Contains("alpaca, vicuna, chatml, raw", e.Message);
    }
}
