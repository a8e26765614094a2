// A multi-turn conversation kept in one KV cache, the way llama.cpp's interactive mode (and Alpaca.cpp
// before it) keeps its context: the cache always holds a prefix of the conversation's ids (ChatTemplate's
// file header shows their layout), so a new user turn prefills only what the cache lacks (the last answer
// token, which was sampled but never fed back, the template's reply end, and the new user turn); the
// answer's other tokens entered the cache as they were decoded.
//
// Context overflow: when cached + new + a reserve for the answer would pass the capacity, the oldest
// exchanges are dropped (the conversation start with its system text stays), the kept history is
// re-encoded as if it had begun there, and the cache is prefilled from scratch with it.
//
// Stop text: formats whose reply ends in a marker the tokenizer may spell in several pieces (ChatML's
// "<|im_end|>") are stopped on the decoded text (StopTextFilter), so the marker is never shown.
using System.Runtime.InteropServices;
using TinyLlama.Model;

namespace TinyLlama.Generation;

/// <summary>One answer of a <see cref="ChatSession"/>.</summary>
/// <param name="Text">The answer's text, without the stop text.</param>
/// <param name="Ids">The generated ids (the stop id, if any, included).</param>
/// <param name="StopReason">Why the answer ended.</param>
/// <param name="DroppedTurns">Oldest exchanges dropped to make room before this answer.</param>
/// <param name="PrefilledTokens">Ids run through the prefill for this turn.</param>
public sealed record ChatReply(string Text, IReadOnlyList<int> Ids, ChatStopReason StopReason, int DroppedTurns, int PrefilledTokens);

/// <summary>A conversation with a model in one KV cache (see the file header). Not thread-safe.</summary>
public sealed class ChatSession : IDisposable
{
    private readonly LlamaForCausalLM model;
    private readonly ChatTemplate template;
    private readonly SamplingOptions options;
    private readonly KvCache cache;
    private readonly CpuDecoder? decoder;
    private readonly HashSet<int> stopIds;
    private readonly List<int> tokens = [];                           // the conversation; the first cache.Length are cached
    private readonly List<(string Message, int[] Reply)> exchanges = []; // Reply = generated ids + reply end
    private Sampler sampler;

    /// <param name="model">The model (in eval mode).</param>
    /// <param name="template">The chat format, bound to the tokenizer and system text.</param>
    /// <param name="options">Sampling settings; the sampler runs on across turns and restarts at <see cref="Reset"/>.</param>
    /// <param name="maxAnswerTokens">The most tokens one answer may have.</param>
    /// <param name="contextSize">
    /// Cache capacity in tokens; 0 for the model's max_position_embeddings, at most <see cref="DefaultContext"/>
    /// (the cache is allocated whole, and a config may claim a context no conversation uses).
    /// </param>
    public ChatSession(LlamaForCausalLM model, ChatTemplate template, SamplingOptions options, int maxAnswerTokens = 256, int contextSize = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(template);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (maxAnswerTokens < 1) throw new ArgumentException($"max tokens per answer must be >= 1, got {maxAnswerTokens}");
        int limit = model.Config.MaxPositionEmbeddings;
        if (contextSize < 0 || contextSize > limit)
            throw new ArgumentException($"context size must be in [0, {limit}] (the model's max_position_embeddings; 0 = all of it, at most {DefaultContext}), got {contextSize}");
        if (template.Tokenizer.VocabSize > model.Config.VocabSize)
            throw new ArgumentException($"the tokenizer has {template.Tokenizer.VocabSize} pieces but the model's vocabulary is {model.Config.VocabSize}");
        this.model = model;
        this.template = template;
        this.options = options;
        MaxAnswerTokens = maxAnswerTokens;
        Capacity = contextSize == 0 ? Math.Min(limit, DefaultContext) : contextSize;
        cache = model.NewCache(1, Capacity);
        decoder = CpuDecoder.TryCreate(model, cache, out _);
        stopIds = [.. model.Config.EosTokenIds];
        if (template.Tokenizer.EosId >= 0) stopIds.Add(template.Tokenizer.EosId);
        sampler = new Sampler(options);
    }

    /// <summary>The largest context a session takes when not told its size (llama.cpp's default n_ctx).</summary>
    public const int DefaultContext = LlamaForCausalLM.DefaultCacheTokens;

    /// <summary>The context in tokens (the cache's capacity).</summary>
    public int Capacity { get; }

    /// <summary>The most tokens one answer may have.</summary>
    public int MaxAnswerTokens { get; }

    /// <summary>Tokens the answer is guaranteed room for before older exchanges are dropped: MaxAnswerTokens, at most half the context.</summary>
    public int AnswerReserve => Math.Min(MaxAnswerTokens, Capacity / 2);

    /// <summary>Ids run through prefill since the session began (decode steps not counted): how much the cache saved.</summary>
    public long PrefilledTokens { get; private set; }

    /// <summary>Ids in the KV cache.</summary>
    public int CachedTokens => cache.Length;

    /// <summary>The conversation's ids so far (a prefix of them is cached).</summary>
    public IReadOnlyList<int> History => tokens;

    /// <summary>Completed exchanges kept in the context.</summary>
    public int Exchanges => exchanges.Count;

    /// <summary>Raised by <see cref="Respond"/> before its prefill when it dropped the oldest exchanges (their number) to fit the context.</summary>
    public event Action<int>? ContextTrimmed;

    /// <summary>Forgets the conversation and empties the cache.</summary>
    public void Reset()
    {
        cache.Reset();
        tokens.Clear();
        exchanges.Clear();
        sampler = new Sampler(options);
    }

    /// <summary>
    /// Answers <paramref name="message"/>: prefills what the cache lacks, then samples until EOS, the stop
    /// text, <see cref="MaxAnswerTokens"/>, a full context or <paramref name="cancel"/>. Text is passed to
    /// <paramref name="onText"/> as soon as it is final. A message too long for the context throws an
    /// ArgumentException and leaves the conversation as it was.
    /// </summary>
    public ChatReply Respond(string message, Action<string>? onText = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        int alone = template.EncodeStart().Length + template.EncodeUserTurn(message, first: true).Length;
        if (alone > Capacity)
            throw new ArgumentException($"the message needs {alone} tokens with the conversation start; the context holds {Capacity}");

        int dropped = 0;
        if (tokens.Count == 0) tokens.AddRange(template.EncodeStart());
        int[] user = template.EncodeUserTurn(message, first: exchanges.Count == 0);
        if (tokens.Count + user.Length + AnswerReserve > Capacity && exchanges.Count > 0)
        {
            int[] kept;
            do
            {
                exchanges.RemoveAt(0);
                dropped++;
                kept = template.EncodeConversation(exchanges, message);
            } while (exchanges.Count > 0 && kept.Length + AnswerReserve > Capacity);
            tokens.Clear();
            tokens.AddRange(kept);
            cache.Reset();
            ContextTrimmed?.Invoke(dropped);
        }
        else tokens.AddRange(user);

        int prefill = tokens.Count - cache.Length;
        if (prefill == 0) throw new ArgumentException("nothing to answer: the message encodes to no tokens");
        var logits = Forward(CollectionsMarshal.AsSpan(tokens)[cache.Length..]);
        PrefilledTokens += prefill;

        var reply = new List<int>();
        var output = new StopTextFilter(template.StopText is { } stop ? [stop] : [], onText);
        var stream = template.Tokenizer.CreateStreamDecoder();
        ChatStopReason reason;
        while (true)
        {
            if (cancel.IsCancellationRequested) { reason = ChatStopReason.Cancelled; break; }
            int next = sampler.Sample(logits, tokens);
            reply.Add(next);
            tokens.Add(next); // not cached until fed back: the next step or the next turn's prefill
            if (stopIds.Contains(next)) { reason = ChatStopReason.EndOfSequence; break; }
            if (output.Push(stream.Push(next))) { reason = ChatStopReason.StopText; break; }
            if (reply.Count >= MaxAnswerTokens) { reason = ChatStopReason.MaxTokens; break; }
            if (cache.Length >= Capacity) { reason = ChatStopReason.ContextFull; break; }
            logits = Forward([next]);
        }
        if (reason != ChatStopReason.StopText) output.Finish(stream.Flush());

        int[] end = template.EncodeReplyEnd(reason);
        tokens.AddRange(end);
        exchanges.Add((message, [.. reply, .. end]));
        return new ChatReply(output.Text, reply, reason, dropped, prefill);
    }

    /// <summary>Releases the CPU decoder's pinned weights.</summary>
    public void Dispose() => decoder?.Dispose();

    // Next-token logits [V] after ids continue the cached sequence.
    private ReadOnlySpan<float> Forward(scoped ReadOnlySpan<int> ids) => TextGenerator.Forward(model, decoder, ids, cache);
}
