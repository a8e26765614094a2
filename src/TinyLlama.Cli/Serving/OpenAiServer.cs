// The HTTP side of `tinyllama serve`: OpenAI's API as llama.cpp's llama-server serves it, on Kestrel's
// minimal APIs, over a TinyLlamaChatClient (chat) and its BatchScheduler (plain completions).
//
//   POST /v1/chat/completions  {"messages":[{"role","content"}], temperature, top_p, top_k, max_tokens
//                              (or max_completion_tokens), stop, seed, stream, stream_options.include_usage}
//   POST /v1/completions       the same with "prompt" (a string) instead of messages
//   GET  /v1/models, GET /health, GET / (the chat page, chat.html)
//
// Shapes follow OpenAI's API reference: a response object with choices and usage, or with stream: true
// server-sent events "data: {chunk}\n\n" ending in "data: [DONE]\n\n" (the first chat chunk carries the
// role, the last a finish_reason, then usage when asked). Every failure is {"error":{"message","type",
// "param","code"}}: 400 for a bad request (naming the field; an oversize prompt names the context size),
// 401 for a missing or wrong bearer token when --api-key is set, 503 when the scheduler's queue is full.
// A request's cancellation token is the connection's, so a client that disconnects frees its slot.
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Logging;
using TinyLlama.Serving;

namespace TinyLlama.Cli.Serving;

internal static class OpenAiServer
{
    /// <summary>A request the API refuses: HTTP status and OpenAI's error fields.</summary>
    internal sealed class ApiException(int status, string message, string? param = null, string type = "invalid_request_error", string? code = null) : Exception(message)
    {
        public int Status { get; } = status;
        public string? Param { get; } = param;
        public string Type { get; } = type;
        public string? Code { get; } = code;
    }

    /// <summary>
    /// A server listening on <paramref name="host"/>:<paramref name="port"/> (0: any free port; read the bound address
    /// from Urls after StartAsync). <paramref name="apiKey"/> null leaves the API open.
    /// </summary>
    public static WebApplication Create(TinyLlamaChatClient chat, BatchScheduler scheduler, string host, int port, string? apiKey)
    {
        IPAddress? address = host == "localhost" ? null
            : IPAddress.TryParse(host, out var ip) ? ip : throw new CliException($"--host: '{host}' is not an IP address or localhost", isUsage: true);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = 8 << 20;
            if (address is null) k.ListenLocalhost(port);
            else k.Listen(address, port);
        });
        var app = builder.Build();
        app.Use(async (context, next) =>
        {
            try
            {
                if (apiKey is not null && context.Request.Path.StartsWithSegments("/v1")
                    && context.Request.Headers.Authorization.ToString() != "Bearer " + apiKey)
                    throw new ApiException(401, "Invalid API key: send it as 'Authorization: Bearer KEY'", type: "authentication_error", code: "invalid_api_key");
                await next(context);
            }
            catch (ApiException e) when (!context.Response.HasStarted)
            {
                await WriteError(context, e);
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
            {
                // The client went away; its request has been cancelled and its slot freed.
            }
        });
        app.MapGet("/", () => Results.Content(ChatPage.Value, "text/html; charset=utf-8"));
        app.MapGet("/health", () => Json(new JsonObject
        {
            ["status"] = "ok", ["slots_idle"] = scheduler.Options.Parallel - scheduler.ActiveRequests,
            ["slots_processing"] = scheduler.ActiveRequests, ["queued"] = scheduler.QueuedRequests,
        }));
        app.MapGet("/v1/models", () => Json(new JsonObject
        {
            ["object"] = "list",
            ["data"] = new JsonArray(new JsonObject { ["id"] = chat.ModelId, ["object"] = "model", ["created"] = Started, ["owned_by"] = "tinyllama" }),
        }));
        app.MapPost("/v1/chat/completions", (HttpContext context) => ChatCompletions(context, chat));
        app.MapPost("/v1/completions", (HttpContext context) => Completions(context, chat, scheduler));
        return app;
    }

    private static readonly long Started = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    private static readonly Lazy<string> ChatPage = new(() =>
    {
        using var stream = typeof(OpenAiServer).Assembly.GetManifestResourceStream("TinyLlama.Cli.chat.html")
            ?? throw new InvalidOperationException("the chat page is missing from the assembly");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    });

    // ---------------- the two generation endpoints ----------------

    private static async Task ChatCompletions(HttpContext context, TinyLlamaChatClient chat)
    {
        var body = await ReadBody(context);
        var messages = ReadMessages(body);
        var (options, stream, usage) = ReadOptions(body);
        var cancel = context.RequestAborted;
        var updates = chat.GetStreamingResponseAsync(messages, options, cancel).GetAsyncEnumerator(cancel);
        await using var _ = updates;
        bool any = await First(() => updates.MoveNextAsync(), "messages");
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        JsonObject Envelope(string kind) => new() { ["id"] = id, ["object"] = kind, ["created"] = created, ["model"] = chat.ModelId };

        if (!stream)
        {
            var text = new StringBuilder();
            ChatFinishReason? finish = null;
            UsageDetails? counts = null;
            for (bool more = any; more; more = await updates.MoveNextAsync())
                Collect(updates.Current, text, ref finish, ref counts);
            var response = Envelope("chat.completion");
            response["choices"] = new JsonArray(new JsonObject
            {
                ["index"] = 0,
                ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = text.ToString() },
                ["finish_reason"] = FinishName(finish),
            });
            response["usage"] = Usage(counts);
            await Json(response).ExecuteAsync(context);
            return;
        }

        await StartEvents(context);
        var first = Envelope("chat.completion.chunk");
        first["choices"] = new JsonArray(new JsonObject { ["index"] = 0, ["delta"] = new JsonObject { ["role"] = "assistant", ["content"] = "" }, ["finish_reason"] = null });
        await Event(context, first);
        UsageDetails? total = null;
        for (bool more = any; more; more = await updates.MoveNextAsync())
        {
            var u = updates.Current;
            ChatFinishReason? finish = null;
            var piece = new StringBuilder();
            Collect(u, piece, ref finish, ref total);
            if (piece.Length == 0 && finish is null) continue;
            var chunk = Envelope("chat.completion.chunk");
            chunk["choices"] = new JsonArray(new JsonObject
            {
                ["index"] = 0,
                ["delta"] = piece.Length > 0 ? new JsonObject { ["content"] = piece.ToString() } : new JsonObject(),
                ["finish_reason"] = FinishName(finish),
            });
            await Event(context, chunk);
        }
        if (usage)
        {
            var last = Envelope("chat.completion.chunk");
            last["choices"] = new JsonArray();
            last["usage"] = Usage(total);
            await Event(context, last);
        }
        await Done(context);
    }

    private static async Task Completions(HttpContext context, TinyLlamaChatClient chat, BatchScheduler scheduler)
    {
        var body = await ReadBody(context);
        string prompt = body.TryGetProperty("prompt", out var p) ? p.ValueKind switch
        {
            JsonValueKind.String => p.GetString()!,
            JsonValueKind.Array when p.GetArrayLength() == 1 && p[0].ValueKind == JsonValueKind.String => p[0].GetString()!,
            _ => throw new ApiException(400, "'prompt' must be a string (or an array of one string)", "prompt"),
        } : throw new ApiException(400, "'prompt' is required", "prompt");
        var (options, stream, usage) = ReadOptions(body);
        var tokenizer = scheduler.Tokenizer;
        int[] ids = tokenizer.Encode(prompt, addBos: tokenizer.BosId >= 0);
        var request = Wrap(() =>
        {
            var sampling = new Generation.SamplingOptions(options.Temperature ?? TinyLlamaChatClient.DefaultTemperature, options.TopK ?? TinyLlamaChatClient.DefaultTopK,
                options.TopP ?? TinyLlamaChatClient.DefaultTopP, Seed: options.Seed is long s ? unchecked((ulong)s) : (ulong)Random.Shared.NextInt64());
            return new GenerationRequest(ids, options.MaxOutputTokens, sampling, options.StopSequences?.ToArray());
        }, "prompt");
        var cancel = context.RequestAborted;
        var generation = Wrap(() => scheduler.Submit(request, cancel), "prompt");
        string id = "cmpl-" + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        JsonObject Choice(string text, GenerationFinishReason? finish) => new()
        {
            ["id"] = id, ["object"] = "text_completion", ["created"] = created, ["model"] = chat.ModelId,
            ["choices"] = new JsonArray(new JsonObject { ["text"] = text, ["index"] = 0, ["logprobs"] = null, ["finish_reason"] = FinishName(finish) }),
        };
        JsonObject CompletionUsage(int generated, int cached) => new()
        {
            ["prompt_tokens"] = generation.PromptTokens, ["completion_tokens"] = generated, ["total_tokens"] = generation.PromptTokens + generated,
            ["prompt_tokens_details"] = new JsonObject { ["cached_tokens"] = cached },
        };

        if (stream) await StartEvents(context);
        var all = new StringBuilder();
        GenerationFinishReason? reason = null;
        int count = 0, cached = 0;
        await foreach (var u in generation.WithCancellation(cancel))
        {
            all.Append(u.Text);
            reason = u.FinishReason;
            count = u.CompletionTokens;
            cached = u.CachedPromptTokens;
            if (stream && (u.Text.Length > 0 || reason is not null)) await Event(context, Choice(u.Text, reason));
        }
        if (!stream)
        {
            var response = Choice(all.ToString(), reason);
            response["usage"] = CompletionUsage(count, cached);
            await Json(response).ExecuteAsync(context);
            return;
        }
        if (usage)
        {
            var last = Choice("", null);
            last["choices"] = new JsonArray();
            last["usage"] = CompletionUsage(count, cached);
            await Event(context, last);
        }
        await Done(context);
    }

    // ---------------- reading requests ----------------

    private static async Task<JsonElement> ReadBody(HttpContext context)
    {
        try
        {
            using var doc = await JsonDocument.ParseAsync(context.Request.Body, default, context.RequestAborted);
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ApiException(400, "the request body must be a JSON object");
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new ApiException(400, $"the request body is not valid JSON: {e.Message}");
        }
    }

    private static List<ChatMessage> ReadMessages(JsonElement body)
    {
        if (!body.TryGetProperty("messages", out var array) || array.ValueKind != JsonValueKind.Array || array.GetArrayLength() == 0)
            throw new ApiException(400, "'messages' must be a non-empty array of {role, content} objects", "messages");
        var list = new List<ChatMessage>();
        int i = 0;
        foreach (var m in array.EnumerateArray())
        {
            string where = $"messages[{i++}]";
            if (m.ValueKind != JsonValueKind.Object || !m.TryGetProperty("role", out var r) || r.ValueKind != JsonValueKind.String)
                throw new ApiException(400, $"'{where}' must be an object with a string 'role'", where);
            var role = r.GetString() switch
            {
                "system" or "developer" => ChatRole.System,
                "user" => ChatRole.User,
                "assistant" => ChatRole.Assistant,
                var other => throw new ApiException(400, $"'{where}.role' must be system, user or assistant, got '{other}'", where + ".role"),
            };
            list.Add(new ChatMessage(role, ReadContent(m, where)));
        }
        return list;
    }

    // "content": a string, null (an assistant turn with no text), or an array of {"type":"text","text"} parts.
    private static string ReadContent(JsonElement message, string where)
    {
        if (!message.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null) return "";
        if (c.ValueKind == JsonValueKind.String) return c.GetString()!;
        if (c.ValueKind != JsonValueKind.Array) throw new ApiException(400, $"'{where}.content' must be a string or an array of text parts", where + ".content");
        var text = new StringBuilder();
        foreach (var part in c.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object || !part.TryGetProperty("type", out var t) || t.ValueKind != JsonValueKind.String || t.GetString() != "text"
                || !part.TryGetProperty("text", out var s) || s.ValueKind != JsonValueKind.String)
                throw new ApiException(400, $"'{where}.content' parts must be {{\"type\": \"text\", \"text\": string}} (only text is supported)", where + ".content");
            text.Append(s.GetString());
        }
        return text.ToString();
    }

    // Sampling and length settings shared by both endpoints, checked with the field named.
    private static (ChatOptions Options, bool Stream, bool Usage) ReadOptions(JsonElement body)
    {
        var options = new ChatOptions
        {
            Temperature = (float?)Number(body, "temperature", 0, 100),
            TopP = (float?)Number(body, "top_p", 0, 1, minOpen: true),
            TopK = Integer(body, "top_k", 0, int.MaxValue),
            MaxOutputTokens = Integer(body, "max_completion_tokens", 1, int.MaxValue) ?? Integer(body, "max_tokens", 1, int.MaxValue),
            Seed = Integer(body, "seed", long.MinValue, long.MaxValue),
            StopSequences = Stop(body),
        };
        bool stream = Bool(body, "stream") ?? false;
        bool usage = body.TryGetProperty("stream_options", out var so) && so.ValueKind == JsonValueKind.Object && (Bool(so, "include_usage", "stream_options.include_usage") ?? false);
        return (options, stream, usage);
    }

    private static double? Number(JsonElement body, string name, double min, double max, bool minOpen = false)
    {
        if (!body.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double x) || !(minOpen ? x > min : x >= min) || x > max)
            throw new ApiException(400, $"'{name}' must be a number in {(minOpen ? "(" : "[")}{min}, {max}], got {v.GetRawText()}", name);
        return x;
    }

    private static long? Integer(JsonElement body, string name, long min, long max)
    {
        if (!body.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long x) || x < min || x > max)
            throw new ApiException(400, $"'{name}' must be an integer{(min > long.MinValue ? $" >= {min}" : "")}{(max < int.MaxValue ? $" and <= {max}" : "")}, got {v.GetRawText()}", name);
        return x;
    }

    private static int? Integer(JsonElement body, string name, int min, int max) => (int?)Integer(body, name, (long)min, max);

    private static bool? Bool(JsonElement body, string name, string? label = null)
    {
        if (!body.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new ApiException(400, $"'{label ?? name}' must be true or false, got {v.GetRawText()}", label ?? name),
        };
    }

    // "stop": a string or an array of up to 4 strings (OpenAI's limit).
    private static List<string>? Stop(JsonElement body)
    {
        if (!body.TryGetProperty("stop", out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.String) return [v.GetString()!];
        if (v.ValueKind == JsonValueKind.Array && v.GetArrayLength() <= 4 && v.EnumerateArray().All(s => s.ValueKind == JsonValueKind.String))
            return [.. v.EnumerateArray().Select(s => s.GetString()!)];
        throw new ApiException(400, "'stop' must be a string or an array of at most 4 strings", "stop");
    }

    // The library's refusals as API errors: a bad request (400, naming `param`) or a full queue (503).
    private static T Wrap<T>(Func<T> run, string param)
    {
        try { return run(); }
        catch (ServerBusyException e) { throw new ApiException(503, $"the server is busy: {e.Message}; retry later", type: "server_error", code: "server_busy"); }
        catch (ArgumentException e) { throw new ApiException(400, e.Message, param); }
    }

    private static async Task<bool> First(Func<ValueTask<bool>> moveNext, string param)
    {
        try { return await moveNext(); }
        catch (ServerBusyException e) { throw new ApiException(503, $"the server is busy: {e.Message}; retry later", type: "server_error", code: "server_busy"); }
        catch (ArgumentException e) { throw new ApiException(400, e.Message, param); }
    }

    // ---------------- writing responses ----------------

    private static void Collect(ChatResponseUpdate u, StringBuilder text, ref ChatFinishReason? finish, ref UsageDetails? usage)
    {
        foreach (var content in u.Contents)
        {
            if (content is TextContent t) text.Append(t.Text);
            else if (content is UsageContent c) usage = c.Details;
        }
        finish ??= u.FinishReason;
    }

    private static string? FinishName(ChatFinishReason? reason) =>
        reason is null ? null : reason == ChatFinishReason.Length ? "length" : "stop";

    private static string? FinishName(GenerationFinishReason? reason) => reason switch
    {
        GenerationFinishReason.Stop => "stop",
        GenerationFinishReason.Length => "length",
        _ => null,
    };

    private static JsonObject Usage(UsageDetails? u) => new()
    {
        ["prompt_tokens"] = u?.InputTokenCount ?? 0, ["completion_tokens"] = u?.OutputTokenCount ?? 0, ["total_tokens"] = u?.TotalTokenCount ?? 0,
        ["prompt_tokens_details"] = new JsonObject { ["cached_tokens"] = u?.CachedInputTokenCount ?? 0 },
    };

    // Non-ASCII text as itself, not \uXXXX: the body is JSON for API clients, never inlined into HTML.
    private static readonly JsonSerializerOptions Relaxed = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private static IResult Json(JsonNode node, int status = 200) => Results.Text(node.ToJsonString(Relaxed), "application/json", Encoding.UTF8, status);

    private static Task WriteError(HttpContext context, ApiException e) =>
        Json(new JsonObject
        {
            ["error"] = new JsonObject { ["message"] = e.Message, ["type"] = e.Type, ["param"] = e.Param, ["code"] = e.Code },
        }, e.Status).ExecuteAsync(context);

    private static async Task StartEvents(HttpContext context)
    {
        context.Response.ContentType = "text/event-stream";
        context.Response.Headers.CacheControl = "no-cache";
        await context.Response.Body.FlushAsync(context.RequestAborted);
    }

    private static async Task Event(HttpContext context, JsonNode chunk)
    {
        await context.Response.WriteAsync("data: " + chunk.ToJsonString(Relaxed) + "\n\n", context.RequestAborted);
        await context.Response.Body.FlushAsync(context.RequestAborted);
    }

    private static Task Done(HttpContext context) => context.Response.WriteAsync("data: [DONE]\n\n", context.RequestAborted);
}
