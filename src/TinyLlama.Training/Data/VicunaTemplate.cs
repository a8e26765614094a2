// The Vicuna v1.1 conversation template (lm-sys/FastChat, conversation.py: template "vicuna_v1.1",
// SeparatorStyle.ADD_COLON_TWO, roles USER/ASSISTANT, sep " ", sep2 "</s>") and its tokenisation for
// training with a loss on the assistant replies only.
//
// FastChat's get_prompt for this style renders
//     system + " " + "USER: " + m1 + " " + "ASSISTANT: " + r1 + "</s>" + "USER: " + m2 + " " + ...
// i.e. after the system line each message is "ROLE: text" followed by sep (after a user message) or
// sep2 (after an assistant reply), and a generation prompt ends in "ASSISTANT:" (the role with no text).
//
// Tokenisation. FastChat's train.py tokenises the rendered string in one call (the Hugging Face
// tokenizer turns the text "</s>" into the EOS id) and then re-tokenises pieces to find where each
// reply starts, with off-by-one corrections for the Llama tokenizer. We build the ids from segments
// instead, so the mask is exact by construction:
//     [BOS] encode(system line)                                      masked
//     encode("USER: " + m_k + " ASSISTANT:")                         masked
//     encode(r_k)  [EOS]                                             targets
// SentencePiece's dummy prefix puts a space ('▁') in front of every segment, which is exactly the
// separator the rendered text has between the system line and "USER:" and between "ASSISTANT:" and
// the reply. After "</s>" the rendered text has no space, but Llama's (legacy) Hugging Face tokenizer
// also starts the text after a special token with '▁', so "▁USER" there matches it too.
// The separator "</s>" is always the EOS id, never the characters "</s>".
using System.Text;
using TinyLlama.Tokenizers;

namespace TinyLlama.Training.Data;

/// <summary>Who speaks a conversation turn.</summary>
public enum ChatRole
{
    /// <summary>Replaces the default system line (ShareGPT "system").</summary>
    System,
    /// <summary>The user (ShareGPT "human" or "user"); rendered "USER".</summary>
    User,
    /// <summary>The model (ShareGPT "gpt" or "assistant"); rendered "ASSISTANT"; the only turns with a loss.</summary>
    Assistant,
}

/// <summary>One turn of a conversation.</summary>
public readonly record struct ChatMessage(ChatRole Role, string Content);

/// <summary>The Vicuna v1.1 chat template, shared by training and inference.</summary>
public static class VicunaTemplate
{
    /// <summary>The system line used when a conversation has no system turn (FastChat's vicuna_v1.1).</summary>
    public const string DefaultSystem =
        "A chat between a curious user and an artificial intelligence assistant. " +
        "The assistant gives helpful, detailed, and polite answers to the user's questions.";

    /// <summary>Role name rendered for user turns.</summary>
    public const string UserRole = "USER";

    /// <summary>Role name rendered for assistant turns.</summary>
    public const string AssistantRole = "ASSISTANT";

    /// <summary>The text FastChat writes for the end of an assistant reply; in token ids it is always EOS.</summary>
    public const string ReplySeparator = "</s>";

    /// <summary>The system line: <paramref name="system"/> (default <see cref="DefaultSystem"/>) behind the quality marker, if any.</summary>
    public static string SystemLine(string? system = null, SftQuality quality = SftQuality.Unrated)
        => QualityTags.Apply(quality, system ?? DefaultSystem);

    /// <summary>
    /// FastChat's rendered text of a conversation. <paramref name="turns"/> alternate User, Assistant,
    /// User, ... starting with User (no System turns: pass the system text as <paramref name="system"/>).
    /// </summary>
    public static string Render(IReadOnlyList<ChatMessage> turns, string? system = null, SftQuality quality = SftQuality.Unrated)
    {
        CheckAlternation(turns, allowTrailingUser: true);
        var sb = new StringBuilder(SystemLine(system, quality)).Append(' ');
        foreach (var turn in turns)
        {
            bool user = turn.Role == ChatRole.User;
            sb.Append(user ? UserRole : AssistantRole).Append(": ").Append(turn.Content).Append(user ? " " : ReplySeparator);
        }
        return sb.ToString();
    }

    /// <summary>
    /// The text that asks the model for the next reply: <see cref="Render"/> of a history ending with a
    /// user turn, then <c>"ASSISTANT:"</c>. For display; feed the model <see cref="EncodePrompt(LlamaTokenizer, IReadOnlyList{ChatMessage}, string?, SftQuality)"/>,
    /// whose reply separators are EOS ids rather than the characters "&lt;/s&gt;".
    /// </summary>
    public static string GenerationPrompt(IReadOnlyList<ChatMessage> history, string? system = null, SftQuality quality = SftQuality.Unrated)
    {
        CheckEndsWithUser(history);
        return Render(history, system, quality) + AssistantRole + ":";
    }

    /// <summary>
    /// The ids to feed a model at inference, built exactly as in training: BOS, the system line, each
    /// earlier exchange (replies closed by EOS), then the last user message and <c>"ASSISTANT:"</c>.
    /// Generation stops at EOS.
    /// </summary>
    public static int[] EncodePrompt(LlamaTokenizer tokenizer, IReadOnlyList<ChatMessage> history, string? system = null,
        SftQuality quality = SftQuality.Unrated)
        => EncodePrompt(TextEncoder.From(tokenizer), history, system, quality);

    internal static int[] EncodePrompt(TextEncoder encoder, IReadOnlyList<ChatMessage> history, string? system, SftQuality quality)
    {
        CheckEndsWithUser(history);
        var ids = new List<int>(Header(encoder, system, quality));
        for (int i = 0; i + 1 < history.Count; i += 2)
        {
            ids.AddRange(encoder.Encode(UserSegment(history[i].Content)));
            ids.AddRange(ReplySegment(encoder, history[i + 1].Content));
        }
        ids.AddRange(encoder.Encode(UserSegment(history[^1].Content)));
        return [.. ids];
    }

    /// <summary>What every encoded conversation starts with: BOS and the system line (chat's conversation start).</summary>
    public static int[] EncodeHeader(LlamaTokenizer tokenizer, string? system = null)
        => Header(TextEncoder.From(tokenizer), system, SftQuality.Unrated);

    /// <summary>One user turn as <see cref="EncodePrompt(LlamaTokenizer, IReadOnlyList{ChatMessage}, string?, SftQuality)"/> encodes it: <c>"USER: {message} ASSISTANT:"</c>.</summary>
    public static int[] EncodeUserTurn(LlamaTokenizer tokenizer, string message)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(message);
        return tokenizer.Encode(UserSegment(message));
    }

    /// <summary>
    /// Training examples for one conversation (alternating User/Assistant turns starting with User; a
    /// trailing user turn has nothing to learn and is ignored). Labels are the ids of the assistant
    /// replies and their EOS; everything else is -100. A conversation longer than
    /// <paramref name="maxLength"/> tokens is split at exchange boundaries into several examples, each
    /// starting again with BOS and the system line; a single exchange too long is truncated, and a piece
    /// left with no target at all (the prompt alone fills maxLength) is dropped.
    /// </summary>
    public static IReadOnlyList<SftExample> Tokenize(LlamaTokenizer tokenizer, IReadOnlyList<ChatMessage> turns, int maxLength,
        string? system = null, SftQuality quality = SftQuality.Unrated, string source = "")
        => Tokenize(TextEncoder.From(tokenizer), turns, maxLength, system, quality, source, new SftLoadCounters());

    internal static List<SftExample> Tokenize(TextEncoder encoder, IReadOnlyList<ChatMessage> turns, int maxLength,
        string? system, SftQuality quality, string source, SftLoadCounters counters)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 2);
        CheckAlternation(turns, allowTrailingUser: true);
        int[] header = Header(encoder, system, quality);
        var examples = new List<SftExample>();
        var ids = new List<int>();
        var labels = new List<int>();
        int exchanges = 0;

        void Start()
        {
            ids.Clear(); labels.Clear(); exchanges = 0;
            Append(header, target: false);
        }
        void Append(int[] segment, bool target)
        {
            ids.AddRange(segment);
            foreach (int id in segment) labels.Add(target ? id : TrainingInfo.IgnoreIndex);
        }
        void Emit()
        {
            var example = new SftExample([.. ids], [.. labels], source);
            if (example.Length > maxLength) { example = example.Truncate(maxLength); counters.Truncated++; }
            if (example.TargetCount == 0) counters.Dropped++;
            else examples.Add(example);
        }

        Start();
        for (int i = 0; i + 1 < turns.Count; i += 2)
        {
            int[] prompt = encoder.Encode(UserSegment(turns[i].Content));
            int[] reply = ReplySegment(encoder, turns[i + 1].Content);
            if (exchanges > 0 && ids.Count + prompt.Length + reply.Length > maxLength)
            {
                Emit();
                Start();
                counters.Split++;
            }
            Append(prompt, target: false);
            Append(reply, target: true);
            exchanges++;
        }
        if (exchanges > 0) Emit();
        else counters.Dropped++; // no complete exchange: nothing to learn
        return examples;
    }

    private static int[] Header(TextEncoder encoder, string? system, SftQuality quality) =>
        [encoder.BosId, .. encoder.Encode(SystemLine(system, quality))];

    // "USER: {m} ASSISTANT:" — the dummy prefix of the next segment supplies the space before the reply.
    private static string UserSegment(string message) => UserRole + ": " + message + " " + AssistantRole + ":";

    private static int[] ReplySegment(TextEncoder encoder, string reply) => [.. encoder.Encode(reply), encoder.EosId];

    private static void CheckAlternation(IReadOnlyList<ChatMessage> turns, bool allowTrailingUser)
    {
        ArgumentNullException.ThrowIfNull(turns);
        for (int i = 0; i < turns.Count; i++)
        {
            var expected = i % 2 == 0 ? ChatRole.User : ChatRole.Assistant;
            if (turns[i].Role != expected)
                throw new ArgumentException($"turn {i} is {turns[i].Role}, expected {expected}: turns alternate User, Assistant, ... (pass the system text separately)");
            ArgumentNullException.ThrowIfNull(turns[i].Content);
        }
        if (!allowTrailingUser && turns.Count % 2 == 1) throw new ArgumentException("the conversation ends with a user turn");
    }

    private static void CheckEndsWithUser(IReadOnlyList<ChatMessage> history)
    {
        CheckAlternation(history, allowTrailingUser: true);
        if (history.Count % 2 == 0) throw new ArgumentException("a generation prompt needs a history that ends with a user turn");
    }
}

/// <summary>What loading did to the data beyond one example per record (see <see cref="SftDataset"/>).</summary>
internal sealed class SftLoadCounters
{
    public int Truncated;  // examples cut to maxLength
    public int Split;      // extra examples made by splitting long conversations
    public int Dropped;    // records or pieces with no target token left
}
