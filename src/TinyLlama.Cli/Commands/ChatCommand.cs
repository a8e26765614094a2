// `tinyllama chat`: a conversation with a model in the terminal, as Alpaca.cpp offered it: the answer
// streams as it is sampled, the conversation stays in one KV cache (ChatSession), Ctrl-C stops the answer
// (not the program), "/reset" starts over, "/exit" or end of input quits.
//
// With standard input redirected (a script, a test) the dialogue is line-based and stdout carries only the
// answers: one user turn per input line, one answer line per turn (line breaks inside an answer become
// spaces), no banner and no prompt; commands print nothing there, and notices (a dropped turn, an
// over-long message) go to stderr.
using System.CommandLine;
using TinyLlama.Generation;
using TinyLlama.Training.Data;

namespace TinyLlama.Cli.Commands;

internal static class ChatCommand
{
    /// <summary>The verb; it reads turns from <paramref name="stdin"/>, or from the console when null.</summary>
    public static Command Create(TextReader? stdin)
    {
        var model = ModelCommands.ModelOption();
        var tokenizer = ModelCommands.TokenizerOption();
        var adapter = new Option<string?>("--adapter") { Description = "A PEFT LoRA adapter directory to load over the model" };
        var template = new Option<string>("--template") { Description = "Chat format: " + string.Join(", ", ChatTemplates.Names), DefaultValueFactory = _ => "alpaca" };
        var system = new Option<string?>("--system") { Description = "System text (default: the template's own; alpaca: its preamble)" };
        var sampling = new SamplingFlags();
        var maxTokens = new Option<int>("--max-tokens") { Description = "Most tokens per answer", DefaultValueFactory = _ => 256 }.Range(1, OptionRange.MaxCount);
        var ctxSize = new Option<int>("--ctx-size") { Description = "Context in tokens (default 0: the model's max_position_embeddings, at most 4096)" }.Range(0, OptionRange.MaxCount);
        var checkTensors = ModelCommands.CheckTensorsOption();
        var cmd = new Command("chat", "Chat with a model: answers stream as they are sampled, the conversation stays in the KV cache.")
            { model, tokenizer, adapter, template, system, maxTokens, ctxSize, checkTensors };
        sampling.AddTo(cmd);
        cmd.SetAction(parse =>
        {
            var options = sampling.Read(parse);
            int max = parse.GetValue(maxTokens), ctx = parse.GetValue(ctxSize);
            string path = parse.GetValue(model)!, templateName = parse.GetValue(template)!;
            if (!ChatTemplates.Names.Contains(templateName))
                throw new CliException($"--template: unknown '{templateName}'; expected one of {string.Join(", ", ChatTemplates.Names)}", isUsage: true);
            string? adapterDir = parse.GetValue(adapter), tokPath = parse.GetValue(tokenizer);
            var files = new ModelFiles { CheckTensors = parse.GetValue(checkTensors) };
            var lm = ModelCommands.LoadModel(path, files, DeviceOption.Resolve(parse), adapterDir);
            if (ctx > lm.Config.MaxPositionEmbeddings)
                throw new CliException($"--ctx-size: {ctx} exceeds the model's max_position_embeddings {lm.Config.MaxPositionEmbeddings}", isUsage: true);
            if (ctx > 0) ModelCommands.CheckCacheMemory(lm.Config, ctx, $"--ctx-size {ctx}", "lower --ctx-size");
            var tok = ModelCommands.LoadTokenizer(path, tokPath, files, adapterDir);
            using var session = new ChatSession(lm, ChatTemplates.Create(templateName, tok, parse.GetValue(system)), options, max, ctx);
            return Converse(session, templateName, stdin, parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error);
        });
        return cmd;
    }

    private static int Converse(ChatSession session, string templateName, TextReader? stdin, TextWriter output, TextWriter error)
    {
        bool interactive = stdin is null && !Console.IsInputRedirected;
        var input = stdin ?? Console.In;
        session.ContextTrimmed += n => error.WriteLine($"(context full: dropped the oldest {n} turn{(n == 1 ? "" : "s")})");
        if (interactive)
        {
            output.WriteLine($"tinyllama chat: template {templateName}, context {session.Capacity} tokens, up to {session.MaxAnswerTokens} tokens an answer.");
            output.WriteLine("Ctrl-C stops an answer; /reset starts over; /exit or Ctrl-D quits.");
        }

        // Ctrl-C while an answer streams cancels that answer; at the prompt it ends the program as usual.
        CancellationTokenSource? answering = null;
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            if (Volatile.Read(ref answering) is { } cts)
            {
                e.Cancel = true;
                cts.Cancel();
            }
        };
        if (stdin is null) Console.CancelKeyPress += onCancel;
        int failed = 0;
        try
        {
            while (true)
            {
                if (interactive) { output.Write("> "); output.Flush(); }
                string? line = input.ReadLine();
                if (line is null) break;
                string command = line.Trim();
                if (command == "/exit") break;
                if (command == "/reset")
                {
                    session.Reset();
                    if (interactive) output.WriteLine("(conversation cleared)");
                    continue;
                }
                if (interactive && command.Length == 0) continue;

                using var cts = new CancellationTokenSource();
                Volatile.Write(ref answering, cts);
                try
                {
                    var reply = session.Respond(line, text =>
                    {
                        output.Write(interactive ? text : text.Replace('\r', ' ').Replace('\n', ' '));
                        output.Flush();
                    }, cts.Token);
                    output.WriteLine();
                    if (interactive && reply.StopReason == ChatStopReason.Cancelled) output.WriteLine("(stopped)");
                }
                catch (ArgumentException e)
                {
                    // A message too long for the context: say so and keep the conversation going.
                    error.WriteLine($"tinyllama: {e.Message}");
                    if (!interactive) output.WriteLine();
                    failed++;
                }
                finally
                {
                    Volatile.Write(ref answering, null);
                }
            }
        }
        finally
        {
            if (stdin is null) Console.CancelKeyPress -= onCancel;
        }
        if (interactive) output.WriteLine();
        return failed > 0 ? ExitCodes.Failure : ExitCodes.Success;
    }
}
