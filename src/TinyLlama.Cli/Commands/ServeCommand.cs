// `tinyllama serve`: an OpenAI-compatible HTTP server over one model, as llama.cpp's llama-server:
// the model, its tokenizer and chat template load as `tinyllama chat` loads them, a BatchScheduler
// decodes up to --parallel requests together (continuous batching), TinyLlamaChatClient applies the
// chat template, and OpenAiServer maps HTTP onto both (Serving/OpenAiServer.cs lists the endpoints).
// It runs until Ctrl-C. --ctx-size is per slot: prompt plus answer of one request.
using System.CommandLine;
using Microsoft.Extensions.Hosting;
using TinyLlama.Cli.Serving;
using TinyLlama.Serving;
using TinyLlama.Training.Data;

namespace TinyLlama.Cli.Commands;

internal static class ServeCommand
{
    /// <summary>Context per slot when --ctx-size is 0: the model's max_position_embeddings, at most this.</summary>
    public const int DefaultContext = 2048;

    public static Command Create()
    {
        var model = ModelCommands.ModelOption();
        var tokenizer = ModelCommands.TokenizerOption();
        var adapter = new Option<string?>("--adapter") { Description = "A PEFT LoRA adapter directory to load over the model" };
        var template = new Option<string>("--template") { Description = "Chat format: " + string.Join(", ", ChatTemplates.Names), DefaultValueFactory = _ => "alpaca" };
        var system = new Option<string?>("--system") { Description = "System text when a conversation has none (default: the template's own)" };
        var host = new Option<string>("--host") { Description = "Address to listen on", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port to listen on (0: any free port)", DefaultValueFactory = _ => 8080 }.Range(0, 65535);
        var parallel = new Option<int>("--parallel") { Description = "Requests decoded together (slots)", DefaultValueFactory = _ => 4 }.Range(1, 256);
        var ctxSize = new Option<int>("--ctx-size") { Description = $"Context per slot in tokens (default 0: the model's max_position_embeddings, at most {DefaultContext})" }.Range(0, OptionRange.MaxCount);
        var queue = new Option<int>("--queue") { Description = "Requests that may wait for a slot; more get HTTP 503", DefaultValueFactory = _ => 64 }.Range(0, OptionRange.MaxCount);
        var apiKey = new Option<string?>("--api-key") { Description = "Require 'Authorization: Bearer KEY' on /v1 requests" };
        var noCache = new Option<bool>("--no-prompt-cache") { Description = "Prefill every prompt whole (by default a request reuses the longest prefix of its prompt that a free slot's cache holds)" };
        var checkTensors = ModelCommands.CheckTensorsOption();
        var cmd = new Command("serve", "Serve a model over OpenAI's HTTP API (chat and text completions, streaming), with continuous batching.")
            { model, tokenizer, adapter, template, system, host, port, parallel, ctxSize, queue, apiKey, noCache, checkTensors };
        cmd.SetAction(parse =>
        {
            string path = parse.GetValue(model)!, templateName = parse.GetValue(template)!;
            if (!ChatTemplates.Names.Contains(templateName))
                throw new CliException($"--template: unknown '{templateName}'; expected one of {string.Join(", ", ChatTemplates.Names)}", isUsage: true);
            if (parse.GetValue(apiKey) is { Length: 0 }) throw new CliException("--api-key: empty", isUsage: true);
            string? adapterDir = parse.GetValue(adapter), defaultSystem = parse.GetValue(system);
            var files = new ModelFiles { CheckTensors = parse.GetValue(checkTensors) };
            var lm = ModelCommands.LoadModel(path, files, DeviceOption.Resolve(parse), adapterDir);
            int limit = lm.Config.MaxPositionEmbeddings, ctx = parse.GetValue(ctxSize), slots = parse.GetValue(parallel);
            if (ctx > limit) throw new CliException($"--ctx-size: {ctx} exceeds the model's max_position_embeddings {limit}", isUsage: true);
            if (ctx == 0) ctx = Math.Min(limit, DefaultContext);
            ModelCommands.CheckCacheMemory(lm.Config, (long)ctx * slots, $"--parallel {slots} x --ctx-size {ctx}", "lower --parallel or --ctx-size");
            var tok = ModelCommands.LoadTokenizer(path, parse.GetValue(tokenizer), files, adapterDir);
            using var scheduler = new BatchScheduler(lm, tok, new SchedulerOptions(slots, ctx, parse.GetValue(queue), CachePrompts: !parse.GetValue(noCache)));
            using var chat = new TinyLlamaChatClient(scheduler, s => ChatTemplates.Create(templateName, tok, s ?? defaultSystem), Path.GetFileName(Path.TrimEndingDirectorySeparator(path)));
            var app = OpenAiServer.Create(chat, scheduler, parse.GetValue(host)!, parse.GetValue(port), parse.GetValue(apiKey));
            app.StartAsync().GetAwaiter().GetResult();
            var output = parse.InvocationConfiguration.Output;
            output.WriteLine($"tinyllama serve: {string.Join(", ", app.Urls)} ({slots} slots of {ctx} tokens, template {templateName}, steps on the {scheduler.DecodePath}, prompt cache {(scheduler.CachesPrompts ? "on" : "off")}); Ctrl-C stops.");
            output.Flush();
            app.WaitForShutdownAsync().GetAwaiter().GetResult();
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return ExitCodes.Success;
        });
        return cmd;
    }
}
