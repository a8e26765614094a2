// A language model as the judge, behind an OpenAI-compatible chat endpoint (llama.cpp's server, vLLM,
// FastChat's API server and OpenAI itself all serve POST /v1/chat/completions). The judge builds a
// pairwise prompt in the manner of MT-bench's "pair" judge (Zheng et al. 2023, appendix; FastChat's
// judge_prompts.jsonl): a system message asking for an impartial comparison that ignores the answers'
// order and length and ends with a verdict tag, and a user message holding the question and both answers
// between start and end markers. The verdict tags are MT-bench's: "[[A]]" first answer better, "[[B]]"
// second better, "[[C]]" a tie. The wording is ours.
//
// The endpoint is a seam (IChatEndpoint): tests use a fake, HttpChatEndpoint talks HTTP. A reply that
// holds no tag, or tags that contradict each other, counts as a tie (MT-bench counts it as an error and
// leaves the question out; a tie keeps the counts adding up to the questions).
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;

namespace TinyLlama.Training.Judging;

/// <summary>One chat message: role ("system", "user", "assistant") and text.</summary>
public sealed record ChatMessage(string Role, string Content);

/// <summary>A chat model that answers a conversation with one reply text.</summary>
public interface IChatEndpoint
{
    /// <summary>The assistant's reply to <paramref name="messages"/>.</summary>
    string Complete(IReadOnlyList<ChatMessage> messages);
}

/// <summary>A chat model as a pairwise judge (see the file header).</summary>
public sealed class OpenAiEndpointJudge(IChatEndpoint endpoint, string name = "chat") : IPairwiseJudge
{
    /// <summary>The system message.</summary>
    public const string SystemPrompt =
        "You are a fair judge. Compare the two assistant answers to the user's question below and decide which one " +
        "answers it better: more helpful, correct, relevant and clear. Do not let the order in which the answers appear, " +
        "their length or the assistants' names sway you. Explain your comparison briefly, then end with your verdict in " +
        "exactly this form: \"[[A]]\" if assistant A's answer is better, \"[[B]]\" if assistant B's answer is better, " +
        "or \"[[C]]\" if they are equally good.";

    private readonly IChatEndpoint endpoint = endpoint ?? throw new ArgumentNullException(nameof(endpoint));

    /// <inheritdoc/>
    public string Name { get; } = name;

    /// <summary>The two messages the endpoint is sent.</summary>
    public static IReadOnlyList<ChatMessage> Messages(string question, string answerA, string answerB) =>
    [
        new("system", SystemPrompt),
        new("user",
            $"[Question]\n{question}\n\n" +
            $"[The Start of Assistant A's Answer]\n{answerA}\n[The End of Assistant A's Answer]\n\n" +
            $"[The Start of Assistant B's Answer]\n{answerB}\n[The End of Assistant B's Answer]"),
    ];

    /// <summary>The verdict tag in <paramref name="reply"/>: A, B or Tie ("[[C]]"); null when it holds none or more than one kind.</summary>
    public static Preference? ParseVerdict(string reply)
    {
        ArgumentNullException.ThrowIfNull(reply);
        bool a = reply.Contains("[[A]]", StringComparison.Ordinal), b = reply.Contains("[[B]]", StringComparison.Ordinal), c = reply.Contains("[[C]]", StringComparison.Ordinal);
        return (a, b, c) switch
        {
            (true, false, false) => Preference.A,
            (false, true, false) => Preference.B,
            (false, false, true) => Preference.Tie,
            _ => null,
        };
    }

    /// <inheritdoc/>
    public Preference Compare(string question, string answerA, string answerB) =>
        ParseVerdict(endpoint.Complete(Messages(question, answerA, answerB))) ?? Preference.Tie;
}

/// <summary>
/// An OpenAI-compatible endpoint over HTTP: POST <c>{base}/v1/chat/completions</c> with
/// <c>{"model", "messages", "temperature": 0}</c>, the reply read from <c>choices[0].message.content</c>.
/// A failed request or an unexpected reply is an <see cref="InvalidDataException"/> naming the URL.
/// </summary>
public sealed class HttpChatEndpoint : IChatEndpoint, IDisposable
{
    private readonly HttpClient client;
    private readonly bool ownsClient;
    private readonly string? apiKey;

    /// <summary>The URL requests go to.</summary>
    public Uri Url { get; }

    /// <summary>The model name sent with each request.</summary>
    public string Model { get; }

    /// <summary>
    /// An endpoint at <paramref name="baseUrl"/> (e.g. http://localhost:8080, or one ending in /v1);
    /// <paramref name="apiKey"/>, if given, goes as a bearer token. <paramref name="client"/> defaults to a new one this object disposes.
    /// </summary>
    public HttpChatEndpoint(Uri baseUrl, string model, string? apiKey = null, HttpClient? client = null)
    {
        ArgumentNullException.ThrowIfNull(baseUrl);
        ArgumentNullException.ThrowIfNull(model);
        if (baseUrl.Scheme is not ("http" or "https")) throw new ArgumentException($"judge endpoint {baseUrl}: expected an http:// or https:// URL");
        string path = baseUrl.AbsolutePath.TrimEnd('/');
        Url = new Uri(baseUrl, (path.EndsWith("/v1", StringComparison.Ordinal) ? path : path + "/v1") + "/chat/completions");
        Model = model;
        ownsClient = client is null;
        this.client = client ?? new HttpClient { Timeout = TimeSpan.FromMinutes(5) };
        this.apiKey = apiKey;
    }

    /// <inheritdoc/>
    public string Complete(IReadOnlyList<ChatMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        using var request = new HttpRequestMessage(HttpMethod.Post, Url) { Content = new StringContent(Body(messages), Encoding.UTF8, "application/json") };
        if (apiKey is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        string text;
        try
        {
            using var response = client.Send(request);
            text = ReadBody(response);
            if (!response.IsSuccessStatusCode)
                throw new InvalidDataException($"judge endpoint {Url}: HTTP {(int)response.StatusCode} {response.ReasonPhrase}");
        }
        catch (HttpRequestException e) { throw new InvalidDataException($"judge endpoint {Url}: {OneLine(e.Message)}"); }
        catch (TaskCanceledException) { throw new InvalidDataException($"judge endpoint {Url}: no reply within {client.Timeout.TotalSeconds:F0} s"); }
        return Reply(text);
    }

    /// <summary>The request body for <paramref name="messages"/>.</summary>
    internal string Body(IReadOnlyList<ChatMessage> messages)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("model", Model);
            w.WriteStartArray("messages");
            foreach (var m in messages)
            {
                w.WriteStartObject();
                w.WriteString("role", m.Role);
                w.WriteString("content", m.Content);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteNumber("temperature", 0);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>choices[0].message.content of a reply body.</summary>
    internal string Reply(string body)
    {
        try
        {
            using var doc = JsonDocument.Parse(body);
            if (doc.RootElement.ValueKind == JsonValueKind.Object
                && doc.RootElement.TryGetProperty("choices", out var choices) && choices.ValueKind == JsonValueKind.Array && choices.GetArrayLength() > 0
                && choices[0].ValueKind == JsonValueKind.Object
                && choices[0].TryGetProperty("message", out var message) && message.ValueKind == JsonValueKind.Object
                && message.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String)
                return content.GetString()!;
        }
        catch (JsonException) { throw new InvalidDataException($"judge endpoint {Url}: the reply is not JSON"); }
        catch (InvalidOperationException) { throw new InvalidDataException($"judge endpoint {Url}: the reply holds text that is not valid"); }
        throw new InvalidDataException($"judge endpoint {Url}: the reply has no choices[0].message.content string");
    }

    // Replies are small; a judge's reply over 1 MB is not one.
    private string ReadBody(HttpResponseMessage response)
    {
        using var stream = response.Content.ReadAsStream();
        var buffer = new MemoryStream();
        var chunk = new byte[81920];
        int n;
        while ((n = stream.Read(chunk)) > 0)
        {
            if (buffer.Length + n > 1 << 20) throw new InvalidDataException($"judge endpoint {Url}: the reply is over 1 MB");
            buffer.Write(chunk, 0, n);
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    private static string OneLine(string s) => s.ReplaceLineEndings(" ");

    /// <inheritdoc/>
    public void Dispose()
    {
        if (ownsClient) client.Dispose();
    }
}
