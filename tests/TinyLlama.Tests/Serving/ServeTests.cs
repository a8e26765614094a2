// `tinyllama serve` in process on a free loopback port, driven as its users drive it: the official OpenAI .NET
// client, Microsoft.Extensions.AI's IChatClient over it, and plain HTTP for the legacy completions endpoint
// and the error cases. A small random model with the byte tokenizer keeps each test well under a second.
// Every answer is checked against the same prompt decoded greedily alone on the path the server's batched
// decoder equals bit for bit (TextGenerator on the CPU decoder where its batched step applies, as here, else on
// the modules), also when several requests decode in one batch, so no request may lose, duplicate or borrow a
// token. Errors: 400 naming the field (and the context size for an oversize prompt), 401 without
// the API key, 503 with the queue full; a client that disconnects frees its slot.
using System.ClientModel;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.AI;
using OpenAI;
using TinyLlama.Cli.Serving;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Serving;
using TinyLlama.Tensors;
using TinyLlama.Tests.Formats;
using TinyLlama.Tests.Model;
using TinyLlama.Training.Data;
using static TinyLlama.Tests.Training.DataTestUtil;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;
using ChatRole = Microsoft.Extensions.AI.ChatRole;
using ChatFinishReason = Microsoft.Extensions.AI.ChatFinishReason;

namespace TinyLlama.Tests.Serving;

public class ServeTests
{
    private const int Context = 48;

    /// <summary>A running server over a random model, its scheduler, and an HttpClient for it.</summary>
    private sealed class Server : IAsyncDisposable
    {
        public required LlamaForCausalLM Model;
        public required ChatTemplate Template;
        public required BatchScheduler Scheduler;
        public required WebApplication App;
        public required HttpClient Http;
        public required Uri Base;

        public static async Task<Server> Start(int parallel = 4, int queue = 8, string? apiKey = null, int maxPos = 64, int context = Context, int hidden = 32)
        {
            var model = new LlamaForCausalLM(LlamaTests.Tiny(vocab: 260, hidden: hidden, layers: 2, heads: 4, kvHeads: 2, ffn: hidden + 8, maxPos: maxPos), new Generator(23));
            model.Eval();
            var template = ChatTemplates.Create("raw", ByteTokenizer);
            var scheduler = new BatchScheduler(model, ByteTokenizer, new SchedulerOptions(parallel, context, queue));
            var chat = new TinyLlamaChatClient(scheduler, s => ChatTemplates.Create("raw", ByteTokenizer, s), "tiny");
            var app = OpenAiServer.Create(chat, scheduler, "127.0.0.1", 0, apiKey);
            await app.StartAsync();
            var uri = new Uri(app.Urls.First());
            return new Server { Model = model, Template = template, Scheduler = scheduler, App = app, Http = new HttpClient { BaseAddress = uri }, Base = uri };
        }

        public OpenAI.Chat.ChatClient OpenAi(string key = "unused") =>
            new("tiny", new ApiKeyCredential(key), new OpenAIClientOptions { Endpoint = new Uri(Base, "/v1"), NetworkTimeout = TimeSpan.FromSeconds(30) });

        /// <summary>The greedy answer to <paramref name="message"/> decoded alone: its text and finish reason.</summary>
        public (string Text, string Finish, int PromptTokens, int Tokens) Expected(string message, int maxTokens)
        {
            int[] prompt = Template.EncodeConversation([], message);
            var eos = Model.Config.EosTokenIds.Append(ByteTokenizer.EosId).ToArray();
            var ids = TextGenerator.Generate(Model, prompt, maxTokens, SamplingOptions.Greedy, eos, useCpuDecoder: CpuPath(Model)).ToArray();
            var decoder = ByteTokenizer.CreateStreamDecoder();
            var text = new StringBuilder();
            foreach (int id in ids) if (!eos.Contains(id)) text.Append(decoder.Push(id));
            text.Append(decoder.Flush());
            return (text.ToString(), eos.Contains(ids[^1]) ? "stop" : "length", prompt.Length, ids.Length);
        }

        public async ValueTask DisposeAsync()
        {
            Http.Dispose();
            await App.StopAsync();
            await App.DisposeAsync();
            Scheduler.Dispose();
        }
    }

    /// <summary>
    /// The chat page at / in headless Chromium (Debian's chromium package; skipped where it is absent): a screenshot
    /// is a PNG, and the DOM after the page sent "Hello there" (/?say=...) holds the streamed answer, equal to the
    /// lone greedy decode, with the page's state "done".
    /// </summary>
    [SkippableFact]
    public async Task ChatPageStreamsAnAnswerInHeadlessChromium()
    {
        string? chromium = new[] { "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome" }.FirstOrDefault(File.Exists);
        Skip.If(chromium is null, "no headless Chromium here (Debian: apt-get install chromium); skipping the chat page test");
        await using var server = await Server.Start();
        var expected = server.Expected("Hello there", 8);
        string url = new Uri(server.Base, "/?say=Hello%20there&temperature=0&max_tokens=8").ToString();
        using var dir = new TempDir();
        string png = dir.File("page.png");
        await Chromium(chromium, dir, "--screenshot=" + png, "--window-size=900,700", url);
        byte[] image = File.ReadAllBytes(png);
        Assert.True(image.Length > 1000 && image.AsSpan(0, 8).SequenceEqual(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }), $"{png}: not a PNG ({image.Length} bytes)");
        string dom = await DomWhenDone(chromium, dir, url);
        Assert.True(dom.Contains("data-state=\"done\"", StringComparison.Ordinal), "the page did not finish its answer:\n" + dom);
        var answer = System.Text.RegularExpressions.Regex.Match(dom, "<div class=\"assistant\">(.*?)</div>", System.Text.RegularExpressions.RegexOptions.Singleline);
        Assert.True(answer.Success, "no assistant line in the page's DOM:\n" + dom);
        Assert.Equal(expected.Text, System.Net.WebUtility.HtmlDecode(answer.Groups[1].Value));
    }

    // Runs headless Chromium on the arguments; returns stdout.
    private static async Task<string> Chromium(string exe, TempDir dir, params string[] args)
    {
        using var process = StartChromium(exe, dir, args);
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        try { await process.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException) { process.Kill(entireProcessTree: true); throw new TimeoutException("chromium did not finish in 90 s: " + await stderr); }
        Assert.True(process.ExitCode == 0, $"chromium exited with {process.ExitCode}: {await stderr}");
        return await stdout;
    }

    private static System.Diagnostics.Process StartChromium(string exe, TempDir dir, params string[] args)
    {
        var info = new System.Diagnostics.ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=" + dir.File("profile-" + Guid.NewGuid().ToString("N")) })
            info.ArgumentList.Add(a);
        foreach (var a in args) info.ArgumentList.Add(a);
        return System.Diagnostics.Process.Start(info)!;
    }

    // Opens the page in Chromium under the DevTools protocol and returns its DOM once the page says its answer is
    // done (the streamed answer has no end --dump-dom could wait for).
    private static async Task<string> DomWhenDone(string exe, TempDir dir, string url)
    {
        using var process = StartChromium(exe, dir, "--remote-debugging-port=0", url);
        try
        {
            // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID" on stderr gives the port.
            int port = 0;
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            while (port == 0)
            {
                string? line = await process.StandardError.ReadLineAsync(cts.Token);
                if (line is null) throw new InvalidOperationException("chromium exited before its DevTools endpoint was up");
                var m = System.Text.RegularExpressions.Regex.Match(line, @"DevTools listening on ws://[^:]+:(\d+)/");
                if (m.Success) port = int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            }
            _ = process.StandardError.ReadToEndAsync(); // keep the pipe drained
            using var http = new HttpClient();
            string? pageSocket = null;
            while (pageSocket is null)
            {
                var targets = JsonDocument.Parse(await http.GetStringAsync($"http://127.0.0.1:{port}/json/list", cts.Token)).RootElement;
                foreach (var t in targets.EnumerateArray())
                    if (t.GetProperty("type").GetString() == "page") pageSocket = t.GetProperty("webSocketDebuggerUrl").GetString();
                if (pageSocket is null) await Task.Delay(100, cts.Token);
            }
            using var ws = new System.Net.WebSockets.ClientWebSocket();
            await ws.ConnectAsync(new Uri(pageSocket), cts.Token);
            const string Wait = "new Promise(r => { const t = setInterval(() => { if (document.body && document.body.dataset.state === 'done') { clearInterval(t); r(document.documentElement.outerHTML); } }, 50); })";
            var buffer = new byte[1 << 16];
            // Asked before the page has navigated, the evaluation dies with its blank page's context: ask again.
            for (int id = 1; ; id++)
            {
                string request = JsonSerializer.Serialize(new { id, method = "Runtime.evaluate", @params = new { expression = Wait, awaitPromise = true, returnByValue = true } });
                await ws.SendAsync(Encoding.UTF8.GetBytes(request), System.Net.WebSockets.WebSocketMessageType.Text, true, cts.Token);
                while (true)
                {
                    using var message = new MemoryStream();
                    System.Net.WebSockets.WebSocketReceiveResult r;
                    do
                    {
                        r = await ws.ReceiveAsync(buffer, cts.Token);
                        message.Write(buffer, 0, r.Count);
                    } while (!r.EndOfMessage);
                    var reply = JsonDocument.Parse(message.ToArray()).RootElement;
                    if (!reply.TryGetProperty("id", out var replyId) || replyId.GetInt32() != id) continue;
                    if (reply.TryGetProperty("result", out var result) && result.TryGetProperty("result", out var value)
                        && value.TryGetProperty("value", out var html) && html.ValueKind == JsonValueKind.String)
                        return html.GetString()!;
                    break;
                }
                await Task.Delay(100, cts.Token);
            }
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }

    [Fact]
    public async Task OpenAiClientGetsTheLoneGreedyAnswerStreamingAndNot()
    {
        await using var server = await Server.Start();
        var client = server.OpenAi();
        var options = new OpenAI.Chat.ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 10 };
        var expected = server.Expected("Hello there", 10);

        var completion = (await client.CompleteChatAsync([new OpenAI.Chat.UserChatMessage("Hello there")], options)).Value;
        Assert.Equal(expected.Text, completion.Content[0].Text);
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Length, completion.FinishReason);
        Assert.Equal(expected.PromptTokens, completion.Usage.InputTokenCount);
        Assert.Equal(10, completion.Usage.OutputTokenCount);

        var streamed = new StringBuilder();
        OpenAI.Chat.ChatFinishReason? finish = null;
        int chunks = 0, usageTokens = -1;
        await foreach (var update in client.CompleteChatStreamingAsync([new OpenAI.Chat.UserChatMessage("Hello there")], options))
        {
            foreach (var part in update.ContentUpdate) { streamed.Append(part.Text); chunks++; }
            finish ??= update.FinishReason;
            if (update.Usage is { } usage) usageTokens = usage.OutputTokenCount;
        }
        Assert.Equal(expected.Text, streamed.ToString());
        Assert.True(chunks > 1, $"{chunks} content chunks: the answer should stream");
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Length, finish);
        Assert.Equal(10, usageTokens);
    }

    [Fact]
    public async Task ExtensionsAiChatClientOverOpenAiStreamingAndNot()
    {
        await using var server = await Server.Start();
        IChatClient client = server.OpenAi().AsIChatClient();
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 7 };
        var expected = server.Expected("Tell me a story", 7);

        var response = await client.GetResponseAsync([new AiChatMessage(ChatRole.User, "Tell me a story")], options);
        Assert.Equal(expected.Text, response.Text);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        Assert.Equal(7, response.Usage?.OutputTokenCount);

        var streamed = new StringBuilder();
        await foreach (var update in client.GetStreamingResponseAsync([new AiChatMessage(ChatRole.User, "Tell me a story")], options))
            streamed.Append(update.Text);
        Assert.Equal(expected.Text, streamed.ToString());
    }

    [Fact]
    public async Task TinyLlamaChatClientInProcessMapsOptionsAndServices()
    {
        await using var server = await Server.Start();
        using var chat = new TinyLlamaChatClient(server.Scheduler, s => ChatTemplates.Create("raw", ByteTokenizer, s), "tiny");
        var expected = server.Expected("abc", 5);
        var response = await chat.GetResponseAsync([new AiChatMessage(ChatRole.User, "abc")], new ChatOptions { Temperature = 0, MaxOutputTokens = 5 });
        Assert.Equal(expected.Text, response.Text);
        Assert.Equal(expected.PromptTokens, response.Usage?.InputTokenCount);
        Assert.Same(chat, chat.GetService(typeof(IChatClient)));
        Assert.Same(server.Scheduler, chat.GetService(typeof(BatchScheduler)));
        Assert.Equal("tiny", (chat.GetService(typeof(ChatClientMetadata)) as ChatClientMetadata)?.DefaultModelId);
        Assert.Null(chat.GetService(typeof(IChatClient), "some key"));

        // A system message, a past exchange and a seeded sampler: the same seed gives the same text.
        AiChatMessage[] conversation = [new(ChatRole.System, "Be kind."), new(ChatRole.User, "Hi"), new(ChatRole.Assistant, "Hello!"), new(ChatRole.User, "More")];
        var request = chat.CreateRequest(conversation, new ChatOptions { Temperature = 1.2f, TopK = 5, TopP = 0.9f, Seed = 42, StopSequences = ["zz"], MaxOutputTokens = 6 });
        var raw = ChatTemplates.Create("raw", ByteTokenizer, "Be kind.");
        Assert.Equal(raw.EncodeConversation([("Hi", [.. ByteTokenizer.Encode("Hello!"), .. raw.EncodeReplyEnd(ChatStopReason.MaxTokens)])], "More"), request.Prompt);
        Assert.Equal(new SamplingOptions(1.2f, 5, 0.9f, Seed: 42), request.Sampling);
        Assert.Equal(["zz"], request.Stop);
        var seeded = new ChatOptions { Temperature = 1.0f, Seed = 7, MaxOutputTokens = 12 };
        string a = (await chat.GetResponseAsync(conversation, seeded)).Text, b = (await chat.GetResponseAsync(conversation, seeded)).Text;
        Assert.Equal(a, b);
        Assert.Contains("end with a user message", Assert.Throws<ArgumentException>(() => chat.CreateRequest([new(ChatRole.Assistant, "x")])).Message);
    }

    // A chat's next turn re-sends the whole conversation: prompt caching keeps the first turn's prompt from the slot
    // that turn left, the client reports it (UsageDetails.CachedInputTokenCount), and the answer is the one decoded
    // alone.
    [Fact]
    public async Task AChatsNextTurnThroughIChatClientReusesTheFirstTurnsCache()
    {
        await using var server = await Server.Start(parallel: 2, maxPos: 128, context: 96);
        using var chat = new TinyLlamaChatClient(server.Scheduler, s => ChatTemplates.Create("raw", ByteTokenizer, s), "tiny");
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 5 };
        // The first message is most of the next turn's prompt (a one-token reply), so the slot it left shares more than
        // half of that prompt even if this random model's reply (bytes that may not be UTF-8) comes back as other
        // bytes (U+FFFD, three each).
        const string Message = "a story about a cat";
        var first = await chat.GetResponseAsync([new AiChatMessage(ChatRole.User, Message)], new ChatOptions { Temperature = 0, MaxOutputTokens = 1 });
        Assert.Equal(0, first.Usage?.CachedInputTokenCount);
        AiChatMessage[] conversation = [new(ChatRole.User, Message), new(ChatRole.Assistant, first.Text), new(ChatRole.User, "de")];
        var second = await chat.GetResponseAsync(conversation, options);
        long firstPrompt = first.Usage?.InputTokenCount ?? 0, cached = second.Usage?.CachedInputTokenCount ?? 0;
        Assert.True(firstPrompt > 0 && cached >= firstPrompt, $"the second turn found {cached} tokens cached; the first turn's prompt had {firstPrompt}");
        Assert.True(cached < second.Usage?.InputTokenCount);
        int[] prompt = chat.CreateRequest(conversation, options).Prompt.ToArray();
        var alone = TextGenerator.Generate(server.Model, prompt, 5, SamplingOptions.Greedy, [ByteTokenizer.EosId], useCpuDecoder: CpuPath(server.Model)).Where(i => i != ByteTokenizer.EosId);
        Assert.Equal(ByteTokenizer.Decode(alone), second.Text);
    }

    [Fact]
    public async Task ConcurrentRequestsInOneBatchEachGetTheirLoneGreedyAnswer()
    {
        await using var server = await Server.Start(parallel: 4, queue: 8);
        var client = server.OpenAi();
        string[] messages = ["a", "bb cc", "the quick brown fox", "x y z w", "hello", "lorem ipsum dolor"];
        var tasks = messages.Select(async m =>
        {
            var text = new StringBuilder();
            await foreach (var u in client.CompleteChatStreamingAsync([new OpenAI.Chat.UserChatMessage(m)], new OpenAI.Chat.ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 16 }))
                foreach (var part in u.ContentUpdate) text.Append(part.Text);
            return text.ToString();
        }).ToArray();
        var answers = await Task.WhenAll(tasks);
        for (int i = 0; i < messages.Length; i++) Assert.Equal(server.Expected(messages[i], 16).Text, answers[i]);
    }

    [Fact]
    public async Task CompletionsEndpointStreamsServerSentEvents()
    {
        await using var server = await Server.Start();
        int[] prompt = [ByteTokenizer.BosId, .. ByteTokenizer.Encode("Once upon")];
        var ids = TextGenerator.Generate(server.Model, prompt, 6, SamplingOptions.Greedy, [ByteTokenizer.EosId], useCpuDecoder: CpuPath(server.Model)).ToArray();
        string expected = ByteTokenizer.Decode(ids.Where(i => i != ByteTokenizer.EosId));

        using var plain = await Post(server.Http, "/v1/completions", """{"prompt":"Once upon","max_tokens":6,"temperature":0}""");
        Assert.Equal(HttpStatusCode.OK, plain.StatusCode);
        var body = JsonDocument.Parse(await plain.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal("text_completion", body.GetProperty("object").GetString());
        Assert.Equal(expected, body.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal(prompt.Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(0, body.GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32());

        using var streamed = await Post(server.Http, "/v1/completions", """{"prompt":"Once upon","max_tokens":6,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}""");
        Assert.Equal("text/event-stream", streamed.Content.Headers.ContentType?.MediaType);
        var events = (await streamed.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.All(events, e => Assert.StartsWith("data: ", e));
        Assert.Equal("data: [DONE]", events[^1]);
        var chunks = events[..^1].Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement).ToArray();
        string text = string.Concat(chunks.Where(c => c.GetProperty("choices").GetArrayLength() > 0).Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString()));
        Assert.Equal(expected, text);
        Assert.Equal(6, chunks[^1].GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        // The same prompt again found all but its last token in the slot the first request left (prompt caching).
        Assert.Equal(prompt.Length - 1, chunks[^1].GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32());
        Assert.Equal("length", chunks[^2].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    [Theory]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"temperature":-1}""", "temperature")]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"top_p":0}""", "top_p")]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"max_tokens":0}""", "max_tokens")]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"stop":[1]}""", "stop")]
    [InlineData("""{"messages":[{"role":"user","content":"hi"}],"stream":"yes"}""", "stream")]
    [InlineData("""{"messages":[{"role":"wizard","content":"hi"}]}""", "messages[0].role")]
    [InlineData("""{"messages":[]}""", "messages")]
    [InlineData("""{"messages":[{"role":"assistant","content":"hi"}]}""", "messages")]
    [InlineData("""{"messages": """, null)]
    public async Task BadRequestsGet400NamingTheField(string json, string? param)
    {
        await using var server = await Server.Start();
        using var response = await Post(server.Http, "/v1/chat/completions", json);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
        Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
        Assert.Equal(param, error.GetProperty("param").GetString());
        Assert.False(string.IsNullOrEmpty(error.GetProperty("message").GetString()));
    }

    [Fact]
    public async Task AnOversizePromptGets400NamingTheContextSize()
    {
        await using var server = await Server.Start();
        string longText = new('a', Context + 5);
        using var chat = await Post(server.Http, "/v1/chat/completions", $$"""{"messages":[{"role":"user","content":"{{longText}}"}],"stream":true}""");
        Assert.Equal(HttpStatusCode.BadRequest, chat.StatusCode);
        Assert.Contains($"context size of {Context}", await chat.Content.ReadAsStringAsync());
        using var completion = await Post(server.Http, "/v1/completions", $$"""{"prompt":"{{longText}}"}""");
        Assert.Equal(HttpStatusCode.BadRequest, completion.StatusCode);
        Assert.Contains($"context size of {Context}", await completion.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task TheApiKeyIsRequiredOnV1Only()
    {
        await using var server = await Server.Start(apiKey: "sesame");
        using var none = await server.Http.GetAsync("/v1/models");
        Assert.Equal(HttpStatusCode.Unauthorized, none.StatusCode);
        Assert.Equal("authentication_error", JsonDocument.Parse(await none.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("type").GetString());
        var wrong = await Assert.ThrowsAsync<ClientResultException>(() => server.OpenAi("open").CompleteChatAsync([new OpenAI.Chat.UserChatMessage("hi")]));
        Assert.Equal(401, wrong.Status);
        var right = await server.OpenAi("sesame").CompleteChatAsync([new OpenAI.Chat.UserChatMessage("hi")], new OpenAI.Chat.ChatCompletionOptions { MaxOutputTokenCount = 3, Temperature = 0 });
        Assert.Equal(3, right.Value.Usage.OutputTokenCount);
        using var health = await server.Http.GetAsync("/health");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
    }

    [Fact]
    public async Task AFullQueueGets503()
    {
        await using var server = await Server.Start(parallel: 1, queue: 1);
        const string json = """{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"temperature":0}""";
        Task<HttpResponseMessage> first, second;
        using (server.Scheduler.HoldAdmission())
        {
            // One request waits for the free slot, one in the queue: the third is refused.
            first = Post(server.Http, "/v1/chat/completions", json);
            second = Post(server.Http, "/v1/chat/completions", json);
            await WaitFor(() => server.Scheduler.QueuedRequests == 2);
            using var third = await Post(server.Http, "/v1/chat/completions", json);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, third.StatusCode);
            var error = JsonDocument.Parse(await third.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
            Assert.Equal("server_busy", error.GetProperty("code").GetString());
        }
        // Released: both waiting requests are served.
        foreach (var waiting in new[] { first, second })
        {
            using var response = await waiting;
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }
    }

    // The steps are held after the request's first token, so it is certainly still running when its client goes
    // away. (Letting it run was a race: a cold process took 1.6-1.9 s to its response headers, longer than the whole
    // 4000-token answer, and HttpClient's default drain of an unread body on dispose could read the rest of a short
    // one and return the connection to its pool, with no disconnect at all.)
    [Fact]
    public async Task AClientThatDisconnectsFreesItsSlot()
    {
        await using var server = await Server.Start(parallel: 1, hidden: 128); // its first token is text, not EOS
        using (server.Scheduler.HoldSteps())
        {
            using var client = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = server.Base, Timeout = TimeSpan.FromSeconds(30) };
            using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions")
            {
                Content = new StringContent("""{"messages":[{"role":"user","content":"go on"}],"stream":true,"temperature":0}""", Encoding.UTF8, "application/json"),
            })
            {
                using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
                using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
                Assert.StartsWith("data: ", await reader.ReadLineAsync());
                Assert.Equal(1, server.Scheduler.ActiveRequests);
            } // disposing the response (nothing drained) closes the connection
            await WaitFor(() => server.Scheduler.ActiveRequests == 0);
            Assert.Equal(1, server.Scheduler.CancelledRequests);
        }
        // The slot serves the next request.
        var next = await server.OpenAi().CompleteChatAsync([new OpenAI.Chat.UserChatMessage("hi")], new OpenAI.Chat.ChatCompletionOptions { MaxOutputTokenCount = 2, Temperature = 0 });
        Assert.Equal(2, next.Value.Usage.OutputTokenCount);
    }

    // The other way a client goes away: the server's write to it fails and the server stops reading the stream, with
    // no cancellation token involved. A reader that leaves before the last update cancels the generation; without
    // that the slot stayed busy until the answer was complete (seconds here), and whether the server test above saw
    // a cancellation depended on which of the two it noticed first.
    [Theory]
    [InlineData(false)] // the reader leaves the loop
    [InlineData(true)]  // the reader throws
    public async Task AReaderThatStopsEarlyFreesItsSlot(bool throws)
    {
        await using var server = await Server.Start(parallel: 1, hidden: 128); // its first token is text, not EOS
        using (server.Scheduler.HoldSteps())
        {
            var stream = server.Scheduler.Submit(new GenerationRequest(server.Template.EncodeConversation([], "go on"), null, SamplingOptions.Greedy));
            try
            {
                await foreach (var update in stream)
                {
                    Assert.Null(update.FinishReason);
                    Assert.Equal(1, server.Scheduler.ActiveRequests);
                    if (throws) throw new IOException("the client went away");
                    break;
                }
            }
            catch (IOException) when (throws) { }
            await WaitFor(() => server.Scheduler.ActiveRequests == 0);
            Assert.Equal(1, server.Scheduler.CancelledRequests);
        }
        // A stream read to its end is not a cancellation.
        var answer = server.Scheduler.Submit(new GenerationRequest(server.Template.EncodeConversation([], "hi"), 3, SamplingOptions.Greedy));
        int updates = 0;
        await foreach (var update in answer) updates++;
        Assert.True(updates >= 1);
        Assert.Equal(1, server.Scheduler.CancelledRequests);
    }

    [Fact]
    public async Task ModelsHealthAndTheChatPage()
    {
        await using var server = await Server.Start();
        var models = JsonDocument.Parse(await server.Http.GetStringAsync("/v1/models")).RootElement;
        Assert.Equal("tiny", models.GetProperty("data")[0].GetProperty("id").GetString());
        var health = JsonDocument.Parse(await server.Http.GetStringAsync("/health")).RootElement;
        Assert.Equal("ok", health.GetProperty("status").GetString());
        Assert.Equal(4, health.GetProperty("slots_idle").GetInt32());
        using var page = await server.Http.GetAsync("/");
        Assert.Equal("text/html", page.Content.Headers.ContentType?.MediaType);
        Assert.Contains("/v1/chat/completions", await page.Content.ReadAsStringAsync());
    }

    [Theory]
    [InlineData("--port", "70000")]
    [InlineData("--parallel", "0")]
    [InlineData("--queue", "-1")]
    public void ServeRefusesAnOutOfRangeOptionWithOneLine(string option, string value)
    {
        var error = new StringWriter();
        Assert.Equal(TinyLlama.Cli.ExitCodes.Usage, TinyLlama.Cli.Program.Run(["serve", "--model", "nowhere", option, value], TextWriter.Null, error));
        Assert.Contains(option, error.ToString());
        Assert.Single(error.ToString().Trim().Split('\n'));
    }

    [Fact]
    public void StopSequencesEndTheTextAndAreNotShown()
    {
        var shown = new StringBuilder();
        var filter = new StopTextFilter(["END", "stop!"], t => shown.Append(t));
        Assert.False(filter.Push("hello st"));
        Assert.Equal("hello ", shown.ToString()); // "st" may begin "stop!"
        Assert.False(filter.Push("ay E"));
        Assert.Equal("hello stay ", shown.ToString());
        Assert.True(filter.Push("ND and more"));
        Assert.Equal("hello stay ", shown.ToString());
        Assert.Equal("hello stay ", filter.Text);
    }

    // True when the server's steps run on the CPU decoder (the lone reference then decodes on it too).
    private static bool CpuPath(LlamaForCausalLM model) => BatchedDecoder.CpuDecoderUnsupported(model) is null;

    private static Task<HttpResponseMessage> Post(HttpClient http, string path, string json) =>
        http.PostAsync(path, new StringContent(json, Encoding.UTF8, new MediaTypeHeaderValue("application/json")));

    private static async Task WaitFor(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting for the server");
            await Task.Delay(10);
        }
    }
}
