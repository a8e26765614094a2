// The chat formats `tinyllama chat` speaks, as ChatTemplates for ChatSession (Generation/ChatTemplate.cs
// shows how their segments concatenate). Alpaca and Vicuna reuse the training templates' strings, so a
// model fine-tuned here is prompted at chat time exactly as it was trained:
//   alpaca  BOS, then per turn "### Instruction:\n{m}\n\n### Response:" (the first behind the system text,
//           by default Alpaca's preamble, so turn 1 is AlpacaTemplate.EncodePrompt's ids); a reply ends in
//           EOS, as in Alpaca's training examples. (Stanford Alpaca is single-turn; further turns simply
//           follow the EOS, as Alpaca.cpp's chat loop did.)
//   vicuna  VicunaTemplate's ids: BOS + system line, "USER: {m} ASSISTANT:", reply, EOS.
//   chatml  OpenAI's ChatML: "<|im_start|>{role}\n{text}<|im_end|>\n" per message, the reply cued by
//           "<|im_start|>assistant\n" and ended by "<|im_end|>" (the stop text). Each segment is encoded
//           on its own, so the SentencePiece dummy prefix puts a '▁' in front of each, as Llama's legacy
//           Hugging Face tokenizer does after a special token; "<|im_start|>" is one id only when the
//           tokenizer has it as a user-defined piece.
//   raw     BOS, then the text as typed; the model just continues it.
using TinyLlama.Generation;
using TinyLlama.Tokenizers;

namespace TinyLlama.Training.Data;

/// <summary>Creates the chat formats by name.</summary>
public static class ChatTemplates
{
    /// <summary>The format names <see cref="Create"/> accepts.</summary>
    public static IReadOnlyList<string> Names { get; } = ["alpaca", "vicuna", "chatml", "raw"];

    /// <summary>The format <paramref name="name"/> over <paramref name="tokenizer"/>, with <paramref name="system"/> (null: the format's default).</summary>
    public static ChatTemplate Create(string name, LlamaTokenizer tokenizer, string? system = null) => name switch
    {
        "alpaca" => new Alpaca(tokenizer, system),
        "vicuna" => new Vicuna(tokenizer, system),
        "chatml" => new ChatMl(tokenizer, system),
        "raw" => new Raw(tokenizer, system),
        _ => throw new ArgumentException($"unknown chat template '{name}'; expected one of {string.Join(", ", Names)}"),
    };

    private static int[] Bos(LlamaTokenizer tokenizer) => tokenizer.BosId >= 0 ? [tokenizer.BosId] : [];

    // A reply the model did not end with EOS gets one, as the training examples end.
    private static int[] EosUnlessGenerated(LlamaTokenizer tokenizer, ChatStopReason reason) =>
        reason == ChatStopReason.EndOfSequence || tokenizer.EosId < 0 ? [] : [tokenizer.EosId];

    private sealed class Alpaca(LlamaTokenizer tokenizer, string? system) : ChatTemplate(tokenizer)
    {
        private readonly string preamble = system ?? AlpacaTemplate.DefaultPreamble;
        public override string Name => "alpaca";
        public override int[] EncodeStart() => Bos(Tokenizer);
        public override int[] EncodeUserTurn(string message, bool first) => Tokenizer.Encode(AlpacaTemplate.Turn(message, first ? preamble : null));
        public override int[] EncodeReplyEnd(ChatStopReason reason) => EosUnlessGenerated(Tokenizer, reason);
    }

    private sealed class Vicuna(LlamaTokenizer tokenizer, string? system) : ChatTemplate(tokenizer)
    {
        public override string Name => "vicuna";
        public override int[] EncodeStart() => VicunaTemplate.EncodeHeader(Tokenizer, system);
        public override int[] EncodeUserTurn(string message, bool first) => VicunaTemplate.EncodeUserTurn(Tokenizer, message);
        public override int[] EncodeReplyEnd(ChatStopReason reason) => EosUnlessGenerated(Tokenizer, reason);
    }

    private sealed class ChatMl(LlamaTokenizer tokenizer, string? system) : ChatTemplate(tokenizer)
    {
        private const string Start = "<|im_start|>", End = "<|im_end|>";
        public override string Name => "chatml";
        public override string? StopText => End;
        public override int[] EncodeStart() => system is null ? Bos(Tokenizer) : [.. Bos(Tokenizer), .. Tokenizer.Encode(Message("system", system))];
        public override int[] EncodeUserTurn(string message, bool first) => Tokenizer.Encode(Message("user", message) + Start + "assistant\n");
        // The model wrote the end marker (or EOS): only the line break after it is missing.
        public override int[] EncodeReplyEnd(ChatStopReason reason) =>
            Tokenizer.Encode(reason is ChatStopReason.StopText or ChatStopReason.EndOfSequence ? "\n" : End + "\n");
        private static string Message(string role, string text) => Start + role + "\n" + text + End + "\n";
    }

    private sealed class Raw(LlamaTokenizer tokenizer, string? system) : ChatTemplate(tokenizer)
    {
        public override string Name => "raw";
        public override int[] EncodeStart() => system is null ? Bos(Tokenizer) : Tokenizer.Encode(system, addBos: Tokenizer.BosId >= 0);
        public override int[] EncodeUserTurn(string message, bool first) => Tokenizer.Encode(message);
        public override int[] EncodeReplyEnd(ChatStopReason reason) => [];
    }
}
