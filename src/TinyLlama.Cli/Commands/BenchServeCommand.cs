// `tinyllama bench serve`: load on `tinyllama serve`, in process, over loopback only. The real server
// (OpenAiServer over a BatchScheduler) starts on a free 127.0.0.1 port; C concurrent clients each send R
// streaming /v1/completions requests one after another (greedy, N tokens each, a prompt of their own),
// for C in --clients (default 1, 8, 32) with --parallel slots (default 32), then C = 8 against a server
// with one slot (one-at-a-time decoding, the baseline). Per run: aggregate tokens/s (all completion tokens
// over the wall time), time to first token and the gaps between streamed tokens (p50 / p90 / p99).
// Every answer is compared with its prompt's greedy ids decoded alone beforehand (TextGenerator, on the
// path whose steps the batched ones equal bit for bit): a lost, duplicated or borrowed token fails the run. Counts and a --timeout bound it.
// Each client asks its own prompt every time, so with prompt caching (the servers' default, as llama-server's)
// a batched server's client finds all but the last token of it in the slot it had, and the one-slot server the
// prefix its prompt shares with the previous client's; "prompt cached" counts those tokens, and
// --no-prompt-cache measures both servers prefilling every prompt whole.
// --repeat K runs the whole set K times, the batched runs and the baseline alternating, and reports the
// batched / one-slot ratio of each repetition and their median: on a shared VM whose speed drifts by 10-20%
// within a minute, one pair of runs is not a measurement.
//
// With --preset (random weights of a built-in shape, e.g. stories15M) the tokenizer is a synthetic one
// with a piece per id (bytes, then "▁t<id>"), so every generated token is visible text and the check is
// token-exact; with --model the model's own tokenizer is used.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using TinyLlama.Cli.Serving;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Serving;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;

namespace TinyLlama.Cli.Commands;

internal static class BenchServeCommand
{
    /// <summary>One run's figures.</summary>
    internal sealed record Run(int Parallel, int Clients, int Requests, long Tokens, double Seconds, double[] Ttft, double[] Gaps, int Mismatches, long PromptTokens, long CachedTokens)
    {
        public double TokensPerSecond => Tokens / Seconds;
    }

    public static Command Create()
    {
        var model = ModelCommands.ModelOption(required: false);
        var preset = new Option<string?>("--preset") { Description = "Random weights of a built-in shape: stories15M, stories110M, ..." };
        var clients = new Option<string>("--clients") { Description = "Comma-separated counts of concurrent streaming clients", DefaultValueFactory = _ => "1,8,32" };
        var parallel = new Option<int>("--parallel") { Description = "Slots of the batched server", DefaultValueFactory = _ => 32 }.Range(1, 256);
        var baseline = new Option<int>("--baseline-clients") { Description = "Clients of the one-slot baseline run (0: no baseline)", DefaultValueFactory = _ => 8 }.Range(0, 256);
        var requests = new Option<int>("--requests") { Description = "Requests per client, one after another", DefaultValueFactory = _ => 2 }.Range(1, 1000);
        var tokens = new Option<int>("--tokens", "-n") { Description = "Tokens per answer", DefaultValueFactory = _ => 32 }.Range(1, 4096);
        var timeout = new Option<int>("--timeout") { Description = "Seconds after which a run is abandoned", DefaultValueFactory = _ => 300 }.Range(1, 86400);
        var noCache = new Option<bool>("--no-prompt-cache") { Description = "Servers prefill every prompt whole (by default a request reuses the longest cached prefix of a free slot)" };
        var repeat = new Option<int>("--repeat") { Description = "Times to run the whole set (batched runs and baseline alternating); the ratio is reported per repetition and as their median", DefaultValueFactory = _ => 1 }.Range(1, 100);
        var cmd = new Command("serve", "Concurrent streaming clients against `tinyllama serve` on loopback: tokens/s, time to first token, per-token latency; batched vs one slot.")
            { model, preset, clients, parallel, baseline, requests, tokens, timeout, repeat, noCache };
        cmd.SetAction(parse =>
        {
            string? path = parse.GetValue(model), presetName = parse.GetValue(preset);
            if ((path is null) == (presetName is null)) throw new CliException("give exactly one of --model or --preset", isUsage: true);
            var counts = ParseCounts(parse.GetValue(clients)!);
            int n = parse.GetValue(tokens), reps = parse.GetValue(requests), slots = parse.GetValue(parallel), baseClients = parse.GetValue(baseline);
            LlamaForCausalLM lm;
            LlamaTokenizer tok;
            string name;
            if (path is not null)
            {
                var files = new ModelFiles();
                lm = ModelCommands.LoadModel(path, files);
                tok = ModelCommands.LoadTokenizer(path, null, files);
                name = Path.GetFileName(Path.TrimEndingDirectorySeparator(path));
            }
            else
            {
                var config = ModelCommands.Preset(presetName!);
                lm = new LlamaForCausalLM(config, new Generator(0));
                tok = NumberedTokenizer(config.VocabSize);
                name = presetName!;
            }
            lm.Eval();
            var output = parse.InvocationConfiguration.Output;
            int maxClients = Math.Max(counts.Max(), baseClients);
            string[] prompts = [.. Enumerable.Range(0, maxClients).Select(c => $"Once upon a time, client {c} said")];
            int[][] promptIds = [.. prompts.Select(p => tok.Encode(p, addBos: tok.BosId >= 0))];
            int ctx = Math.Min(lm.Config.MaxPositionEmbeddings, promptIds.Max(p => p.Length) + n);
            if (promptIds.Max(p => p.Length) >= ctx) throw new CliException($"the model's context ({lm.Config.MaxPositionEmbeddings}) has no room for {n} tokens after the prompts", isUsage: true);

            // The answers each prompt must get: greedy, alone, on the path the batched decoder equals bit for bit (the
            // CPU decoder where its batched step applies, else the modules).
            string? moduleReason = BatchedDecoder.CpuDecoderUnsupported(lm);
            output.WriteLine($"bench serve: {name}, {n} tokens per answer, {reps} requests per client; steps on the {(moduleReason is null ? "cpu decoder" : $"modules ({moduleReason})")}; decoding {maxClients} reference answers alone first...");
            output.Flush();
            var eos = lm.Config.EosTokenIds.Append(tok.EosId).Where(i => i >= 0).ToArray();
            string[] expected = [.. promptIds.Select(p => Decode(tok, TextGenerator.Generate(lm, p, n, SamplingOptions.Greedy, eos, useCpuDecoder: moduleReason is null), eos))];

            var runs = new List<Run>();
            var ratios = new List<double>();
            var limit = TimeSpan.FromSeconds(parse.GetValue(timeout));
            bool cache = !parse.GetValue(noCache);
            for (int k = 0; k < parse.GetValue(repeat); k++)
            {
                Run? batched = null, single = null;
                foreach (int c in counts)
                {
                    runs.Add(Measure(lm, tok, slots, ctx, c, reps, n, prompts, promptIds, expected, limit, cache));
                    if (c == baseClients && slots > 1) batched = runs[^1];
                }
                if (baseClients > 0) runs.Add(single = Measure(lm, tok, 1, ctx, baseClients, reps, n, prompts, promptIds, expected, limit, cache));
                if (batched is not null && single is not null) ratios.Add(batched.TokensPerSecond / single.TokensPerSecond);
            }

            output.WriteLine($"| {"slots",5} | {"clients",7} | {"requests",8} | {"tokens",7} | {"tok/s",8} | {"TTFT p50/p90/p99 ms",22} | {"token gap p50/p90/p99 ms",26} | {"prompt cached",13} | {"exact",5} |");
            output.WriteLine($"| ----: | ------: | -------: | ------: | -------: | {new string('-', 21)}: | {new string('-', 25)}: | {new string('-', 12)}: | :---: |");
            foreach (var r in runs)
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {r.Parallel,5} | {r.Clients,7} | {r.Requests,8} | {r.Tokens,7} | {r.TokensPerSecond,8:F1} | {Percentiles(r.Ttft),22} | {Percentiles(r.Gaps),26} | {$"{r.CachedTokens}/{r.PromptTokens}",13} | {(r.Mismatches == 0 ? "yes" : "NO"),5} |"));
            if (ratios.Count > 0)
            {
                var sorted = ratios.Order().ToList();
                double median = sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
                string each = ratios.Count > 1 ? string.Create(CultureInfo.InvariantCulture, $" (median of {ratios.Count}: {string.Join(", ", ratios.Select(r => r.ToString("F2", CultureInfo.InvariantCulture)))})") : "";
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"batched ({slots} slots) / one-at-a-time (1 slot) at {baseClients} clients: {median:F2}x aggregate tokens/s{each}"));
            }
            int bad = runs.Sum(r => r.Mismatches);
            if (bad > 0) throw new CliException($"{bad} answers differ from their prompt's greedy answer decoded alone (a lost, duplicated or borrowed token)");
            return ExitCodes.Success;
        });
        return cmd;
    }

    // One run: a fresh server with `slots` slots, one untimed warm-up request, then `clients` concurrent clients of `reps` streaming requests each.
    private static Run Measure(LlamaForCausalLM lm, LlamaTokenizer tok, int slots, int ctx, int clients, int reps, int n, string[] prompts, int[][] promptIds, string[] expected, TimeSpan limit, bool cache)
    {
        using var scheduler = new BatchScheduler(lm, tok, new SchedulerOptions(slots, ctx, QueueCapacity: clients, CachePrompts: cache));
        using var chat = new TinyLlamaChatClient(scheduler, s => ChatTemplates.Create("raw", tok, s), "bench");
        var app = OpenAiServer.Create(chat, scheduler, "127.0.0.1", 0, apiKey: null);
        app.StartAsync().GetAwaiter().GetResult();
        try
        {
            using var http = new HttpClient { BaseAddress = new Uri(app.Urls.First()), Timeout = limit };
            using var cancel = new CancellationTokenSource(limit);
            Stream(http, prompts[0], n, cancel.Token).GetAwaiter().GetResult(); // warm-up (JIT, first allocations), untimed
            long cachedBefore = scheduler.ReusedPromptTokens;
            var ttft = new List<double>[clients];
            var gaps = new List<double>[clients];
            var counted = new long[clients];
            var wrong = new int[clients];
            var clock = Stopwatch.StartNew();
            var tasks = Enumerable.Range(0, clients).Select(c => Task.Run(async () =>
            {
                ttft[c] = []; gaps[c] = [];
                for (int r = 0; r < reps; r++)
                {
                    var (text, first, between, used) = await Stream(http, prompts[c], n, cancel.Token);
                    ttft[c].Add(first);
                    gaps[c].AddRange(between);
                    counted[c] += used;
                    if (text != expected[c]) wrong[c]++;
                }
            })).ToArray();
            Task.WaitAll(tasks);
            double seconds = clock.Elapsed.TotalSeconds;
            long promptTokens = promptIds.Take(clients).Sum(p => (long)p.Length) * reps;
            return new Run(slots, clients, clients * reps, counted.Sum(), seconds, [.. ttft.SelectMany(t => t)], [.. gaps.SelectMany(g => g)], wrong.Sum(),
                promptTokens, scheduler.ReusedPromptTokens - cachedBefore);
        }
        finally
        {
            app.StopAsync().GetAwaiter().GetResult();
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    // One streaming completion: its text, ms to the first text, ms between later text events, completion tokens (usage).
    private static async Task<(string Text, double First, List<double> Gaps, int Tokens)> Stream(HttpClient http, string prompt, int n, CancellationToken cancel)
    {
        string body = JsonSerializer.Serialize(new Dictionary<string, object> { ["prompt"] = prompt, ["max_tokens"] = n, ["temperature"] = 0, ["stream"] = true, ["stream_options"] = new Dictionary<string, bool> { ["include_usage"] = true } });
        var clock = Stopwatch.StartNew();
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel);
        if (!response.IsSuccessStatusCode) throw new CliException($"the server answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync(cancel)}");
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancel));
        var text = new StringBuilder();
        var gaps = new List<double>();
        double first = -1, last = 0;
        int tokens = 0;
        while (await reader.ReadLineAsync(cancel) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]") continue;
            using var chunk = JsonDocument.Parse(line.AsMemory(6));
            var root = chunk.RootElement;
            if (root.TryGetProperty("usage", out var usage)) tokens = usage.GetProperty("completion_tokens").GetInt32();
            var choices = root.GetProperty("choices");
            if (choices.GetArrayLength() == 0) continue;
            string piece = choices[0].GetProperty("text").GetString() ?? "";
            if (piece.Length == 0) continue;
            double now = clock.Elapsed.TotalMilliseconds;
            if (first < 0) first = now;
            else gaps.Add(now - last);
            last = now;
            text.Append(piece);
        }
        return (text.ToString(), first, gaps, tokens);
    }

    private static string Decode(LlamaTokenizer tok, IEnumerable<int> ids, int[] eos)
    {
        var decoder = tok.CreateStreamDecoder();
        var text = new StringBuilder();
        foreach (int id in ids)
            if (!eos.Contains(id) && id < tok.VocabSize) text.Append(decoder.Push(id));
        return text.Append(decoder.Flush()).ToString();
    }

    /// <summary>A tokenizer with one piece per id of a vocabulary of <paramref name="vocab"/>: &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, the 256 bytes, then "▁t&lt;id&gt;".</summary>
    internal static LlamaTokenizer NumberedTokenizer(int vocab)
    {
        var pieces = new List<string> { "<unk>", "<s>", "</s>" };
        var types = new List<TokenType> { TokenType.Unknown, TokenType.Control, TokenType.Control };
        for (int b = 0; b < 256; b++) { pieces.Add(LlamaTokenizer.BytePiece(b)); types.Add(TokenType.Byte); }
        while (pieces.Count < vocab) { pieces.Add("\u2581t" + pieces.Count.ToString(CultureInfo.InvariantCulture)); types.Add(TokenType.Normal); }
        return LlamaTokenizer.FromVocabulary(pieces, new float[pieces.Count], types);
    }

    private static int[] ParseCounts(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) throw new CliException("--clients: no counts given", isUsage: true);
        return [.. parts.Select(p => int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out int c) && c is >= 1 and <= 256 ? c
            : throw new CliException($"--clients: '{p}' is not a count in [1, 256]", isUsage: true))];
    }

    private static string Percentiles(double[] values)
    {
        if (values.Length == 0) return "-";
        var sorted = values.Order().ToArray();
        double At(double q) => sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
        return string.Create(CultureInfo.InvariantCulture, $"{At(0.5):F1} / {At(0.9):F1} / {At(0.99):F1}");
    }
}
