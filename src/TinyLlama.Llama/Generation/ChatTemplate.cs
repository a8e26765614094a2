// The token-level shape of a chat format, as ChatSession needs it: a conversation is
//     Start  User(m_0, first)  reply_0  ReplyEnd(reason_0)  User(m_1)  reply_1  ReplyEnd(reason_1)  ...
// where reply_k are the ids the model generated (the stop token included when it stopped on one).
// ChatSession keeps exactly this sequence in its KV cache and prefills only what a new turn adds.
// The concrete formats (Alpaca, Vicuna, ChatML, raw) live beside the training templates whose strings
// they reuse (TinyLlama.Training.Data.ChatTemplates), so each prompt string exists once.
using TinyLlama.Tokenizers;

namespace TinyLlama.Generation;

/// <summary>Why an answer ended.</summary>
public enum ChatStopReason
{
    /// <summary>The model produced an end-of-sequence id.</summary>
    EndOfSequence,
    /// <summary>The model wrote the template's stop text (e.g. ChatML's "&lt;|im_end|&gt;").</summary>
    StopText,
    /// <summary>The answer reached its token budget.</summary>
    MaxTokens,
    /// <summary>The caller cancelled (Ctrl-C).</summary>
    Cancelled,
    /// <summary>The KV cache (context) is full.</summary>
    ContextFull,
}

/// <summary>
/// A chat format bound to a tokenizer and a system text: the ids that open a conversation, frame each
/// user turn and close each reply (see the file header for how they concatenate).
/// </summary>
public abstract class ChatTemplate(LlamaTokenizer tokenizer)
{
    /// <summary>The tokenizer every segment is encoded with.</summary>
    public LlamaTokenizer Tokenizer { get; } = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));

    /// <summary>The format's name (alpaca, vicuna, chatml, raw).</summary>
    public abstract string Name { get; }

    /// <summary>Ids that open every conversation: BOS, and the system text where the format keeps it apart from the first turn.</summary>
    public abstract int[] EncodeStart();

    /// <summary>Ids of one user turn, ending where the assistant's reply begins; <paramref name="first"/> for the turn right after <see cref="EncodeStart"/>.</summary>
    public abstract int[] EncodeUserTurn(string message, bool first);

    /// <summary>Ids that close a reply after the generated ids, given why it ended (empty when the model closed it itself).</summary>
    public abstract int[] EncodeReplyEnd(ChatStopReason reason);

    /// <summary>Text that ends a reply besides an EOS id (null: EOS only). It is not shown.</summary>
    public virtual string? StopText => null;

    /// <summary>
    /// The ids of a whole conversation: Start, then each exchange's user turn and reply (the generated ids
    /// followed by their <see cref="EncodeReplyEnd"/>), then <paramref name="nextMessage"/>'s user turn
    /// when given. What ChatSession's cache holds.
    /// </summary>
    public int[] EncodeConversation(IReadOnlyList<(string Message, int[] Reply)> exchanges, string? nextMessage = null)
    {
        ArgumentNullException.ThrowIfNull(exchanges);
        var ids = new List<int>(EncodeStart());
        for (int i = 0; i < exchanges.Count; i++)
        {
            ids.AddRange(EncodeUserTurn(exchanges[i].Message, first: i == 0));
            ids.AddRange(exchanges[i].Reply);
        }
        if (nextMessage is not null) ids.AddRange(EncodeUserTurn(nextMessage, first: exchanges.Count == 0));
        return [.. ids];
    }
}
