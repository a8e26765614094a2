// `tinyllama bench generate`: prefill and decode tokens/s of a model with a KV cache.
// Prefill: one forward over P prompt tokens; decode: N single-token steps (greedy), each reading the
// whole cache. Each figure is the median over repeats after a warm-up run. Decode steps run as
// `generate` runs them (CpuDecoder where it applies); --modules times the module path instead, the
// baseline the decoder is compared with.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using TinyLlama.Autograd;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Tensors;

namespace TinyLlama.Cli.Commands;

internal static class BenchGenerateCommand
{
    public static Command Create()
    {
        var model = ModelCommands.ModelOption(required: false);
        var preset = new Option<string?>("--preset") { Description = "Random weights of a built-in shape: stories15M, stories110M, ..." };
        var promptTokens = new Option<int>("--prompt-tokens") { Description = "Prompt length P", DefaultValueFactory = _ => 128 };
        var tokens = new Option<int>("--tokens") { Description = "Tokens to decode N", DefaultValueFactory = _ => 128 };
        var repeats = new Option<int>("--repeats") { Description = "Timed runs (medians are reported)", DefaultValueFactory = _ => 3 };
        var json = new Option<bool>("--json") { Description = "Print {\"prefill_tokens_per_second\": x, \"decode_tokens_per_second\": y}" };
        var modules = new Option<bool>("--modules") { Description = "Decode through the model's modules instead of the CPU decoder (the baseline)" };
        var cmd = new Command("generate", "Prefill and decode throughput with a KV cache.") { model, preset, promptTokens, tokens, repeats, json, modules };
        cmd.SetAction(parse =>
        {
            string? path = parse.GetValue(model), presetName = parse.GetValue(preset);
            if ((path is null) == (presetName is null)) throw new CliException("give exactly one of --model or --preset", isUsage: true);
            int p = parse.GetValue(promptTokens), n = parse.GetValue(tokens), reps = parse.GetValue(repeats);
            if (p < 1 || n < 1 || reps < 1) throw new CliException("--prompt-tokens, --tokens and --repeats must be at least 1", isUsage: true);
            var device = DeviceOption.Resolve(parse);
            var lm = path is not null ? ModelCommands.LoadModel(path, device) : new LlamaForCausalLM(ModelCommands.Preset(presetName!), new Generator(0), DType.F32, device);
            lm.Eval();
            if (p + n > lm.Config.MaxPositionEmbeddings)
                throw new CliException($"--prompt-tokens + --tokens = {p + n} exceeds the model's context of {lm.Config.MaxPositionEmbeddings}", isUsage: true);
            var (prefill, decode, decodePath) = Measure(lm, p, n, reps, !parse.GetValue(modules));
            var output = parse.InvocationConfiguration.Output;
            if (parse.GetValue(json))
                output.WriteLine(JsonLine.Format(("prefill_tokens_per_second", Math.Round(prefill, 2)), ("decode_tokens_per_second", Math.Round(decode, 2))));
            else
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{lm.Config.ParameterCount():N0} parameters, {Environment.ProcessorCount} threads: prefill {p} tokens {prefill:F1} tokens/s, decode {n} tokens {decode:F1} tokens/s ({decodePath}; medians of {reps})"));
            return ExitCodes.Success;
        });
        return cmd;
    }

    /// <summary>Median prefill and decode tokens/s over reps runs after a warm-up, and which path decoded.</summary>
    internal static (double Prefill, double Decode, string Path) Measure(LlamaForCausalLM model, int promptTokens, int newTokens, int reps, bool useCpuDecoder = true)
    {
        var gen = new Generator(1);
        var prompt = new int[promptTokens];
        for (int i = 0; i < prompt.Length; i++) prompt[i] = gen.NextInt(model.Config.VocabSize);
        var cache = model.NewCache(1, promptTokens + newTokens);
        var sampler = new Sampler(SamplingOptions.Greedy);
        var prefill = new double[reps];
        var decode = new double[reps];
        using var _ = GradMode.NoGrad();
        string? why = "--modules";
        using var decoder = useCpuDecoder ? CpuDecoder.TryCreate(model, cache, out why) : null;
        for (int r = -1; r < reps; r++)
        {
            cache.Reset();
            int steps = newTokens; // the warm-up run (r < 0) is a whole run, untimed
            long t0 = Stopwatch.GetTimestamp();
            int next = sampler.Sample(TextGenerator.ModuleForward(model, prompt, cache));
            double tp = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            t0 = Stopwatch.GetTimestamp();
            for (int s = 0; s < steps; s++)
                next = decoder is not null ? sampler.Sample(decoder.Step(next)) : sampler.Sample(TextGenerator.ModuleForward(model, [next], cache));
            double td = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            if (r < 0) continue;
            prefill[r] = promptTokens / tp;
            decode[r] = steps / td;
        }
        Array.Sort(prefill);
        Array.Sort(decode);
        return (prefill[reps / 2], decode[reps / 2], decoder is not null ? "CPU decoder" : $"modules: {why}");
    }
}
