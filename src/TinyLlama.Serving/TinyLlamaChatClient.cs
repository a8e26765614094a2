// Microsoft.Extensions.AI's IChatClient over a BatchScheduler: a conversation (system, user and
// assistant messages) goes through the model's chat template (ChatTemplate: the system text opens it,
// each user turn is framed, each earlier assistant reply is closed as the template closes a reply),
// and the answer streams back as ChatResponseUpdates. ChatOptions map onto the sampler (temperature,
// top-p, top-k, seed) and the request (max output tokens, stop sequences); what a caller leaves unset
// takes llama.cpp's server defaults (temperature 0.8, top-k 40, top-p 0.95, a random seed). Every call
// is a separate request to the scheduler, which is thread-safe, so the client is too.
using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using TinyLlama.Generation;

namespace TinyLlama.Serving;

/// <summary>An <see cref="IChatClient"/> answering with a local model through a <see cref="BatchScheduler"/> (see the file header).</summary>
public sealed class TinyLlamaChatClient : IChatClient
{
    /// <summary>Temperature when the options leave it unset (llama.cpp's server default).</summary>
    public const double DefaultTemperature = 0.8;

    /// <summary>Top-k when unset (llama.cpp's server default).</summary>
    public const int DefaultTopK = 40;

    /// <summary>Top-p when unset (llama.cpp's server default).</summary>
    public const double DefaultTopP = 0.95;

    private readonly BatchScheduler scheduler;
    private readonly Func<string?, ChatTemplate> templateFor;
    private readonly ChatClientMetadata metadata;

    /// <param name="scheduler">Runs the generations (not owned: disposing the client leaves it running).</param>
    /// <param name="templateFor">The chat template for a conversation's system text (null when it has none).</param>
    /// <param name="modelId">The model's name, reported in responses and metadata.</param>
    public TinyLlamaChatClient(BatchScheduler scheduler, Func<string?, ChatTemplate> templateFor, string modelId)
    {
        this.scheduler = scheduler ?? throw new ArgumentNullException(nameof(scheduler));
        this.templateFor = templateFor ?? throw new ArgumentNullException(nameof(templateFor));
        ModelId = modelId ?? throw new ArgumentNullException(nameof(modelId));
        metadata = new ChatClientMetadata("tinyllama", null, modelId);
    }

    /// <summary>The model's name.</summary>
    public string ModelId { get; }

    /// <inheritdoc />
    public Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        GetStreamingResponseAsync(messages, options, cancellationToken).ToChatResponseAsync(cancellationToken);

    /// <inheritdoc />
    /// <remarks>
    /// A bad conversation or option (no user message last, a prompt longer than the context, a bad temperature) throws an
    /// ArgumentException, and a full queue a <see cref="ServerBusyException"/>, from the first MoveNextAsync.
    /// </remarks>
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = CreateRequest(messages, options);
        var stream = scheduler.Submit(request, cancellationToken);
        string responseId = "chatcmpl-" + Guid.NewGuid().ToString("N");
        var created = DateTimeOffset.UtcNow;
        await foreach (var update in stream.WithCancellation(cancellationToken).ConfigureAwait(false))
        {
            var contents = new List<AIContent>();
            if (update.Text.Length > 0) contents.Add(new TextContent(update.Text));
            if (update.FinishReason is not null)
                contents.Add(new UsageContent(new UsageDetails
                {
                    InputTokenCount = stream.PromptTokens,
                    CachedInputTokenCount = update.CachedPromptTokens,
                    OutputTokenCount = update.CompletionTokens,
                    TotalTokenCount = stream.PromptTokens + update.CompletionTokens,
                }));
            yield return new ChatResponseUpdate(ChatRole.Assistant, contents)
            {
                ResponseId = responseId,
                MessageId = responseId,
                CreatedAt = created,
                ModelId = ModelId,
                FinishReason = update.FinishReason switch
                {
                    GenerationFinishReason.Stop => ChatFinishReason.Stop,
                    GenerationFinishReason.Length => ChatFinishReason.Length,
                    _ => null,
                },
            };
        }
    }

    /// <summary>
    /// The scheduler request for a conversation: its ids through the template, and the options mapped (see the file
    /// header). Throws an ArgumentException naming what is wrong.
    /// </summary>
    public GenerationRequest CreateRequest(IEnumerable<ChatMessage> messages, ChatOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var list = messages.ToList();
        string? system = null;
        var exchanges = new List<(string Message, int[] Reply)>();
        string? user = null;
        ChatTemplate? template = null;
        // The system text first (it picks the template), then user/assistant turns in order.
        foreach (var m in list)
            if (m.Role == ChatRole.System) system = system is null ? m.Text : system + "\n" + m.Text;
        template = templateFor(system);
        foreach (var m in list)
        {
            if (m.Role == ChatRole.User) user = user is null ? m.Text : user + "\n" + m.Text;
            else if (m.Role == ChatRole.Assistant)
            {
                // An earlier answer, closed the way the template closes a reply that did not end itself.
                int[] reply = [.. template.Tokenizer.Encode(m.Text), .. template.EncodeReplyEnd(ChatStopReason.MaxTokens)];
                exchanges.Add((user ?? "", reply));
                user = null;
            }
            else if (m.Role != ChatRole.System)
                throw new ArgumentException($"messages: role '{m.Role}' is not supported (expected system, user or assistant)");
        }
        if (user is null) throw new ArgumentException("messages: the conversation must end with a user message");
        int[] prompt = template.EncodeConversation(exchanges, user);

        var sampling = new SamplingOptions(
            Temperature: options?.Temperature ?? DefaultTemperature,
            TopK: options?.TopK ?? DefaultTopK,
            TopP: options?.TopP ?? DefaultTopP,
            Seed: options?.Seed is long seed ? unchecked((ulong)seed) : (ulong)Random.Shared.NextInt64());
        sampling.Validate();
        if (options?.MaxOutputTokens is < 1) throw new ArgumentException($"max output tokens must be >= 1, got {options.MaxOutputTokens}");
        var stops = new List<string>(options?.StopSequences ?? []);
        if (template.StopText is { } stopText) stops.Add(stopText);
        return new GenerationRequest(prompt, options?.MaxOutputTokens, sampling, stops);
    }

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return metadata;
        if (serviceType.IsInstanceOfType(this)) return this;
        if (serviceType.IsInstanceOfType(scheduler)) return scheduler;
        return null;
    }

    /// <summary>Nothing to release: the scheduler belongs to whoever made it.</summary>
    public void Dispose() { }
}
