// `tinyllama bench generate`: prompt-processing and text-generation tokens/s of a model with a KV
// cache, measured as llama.cpp's llama-bench measures them (its -p, -n, -r, -t and its table rows):
//   pp<P>: one forward over P prompt tokens into an empty cache;
//   tg<N>: N single-token forwards from an empty cache, each feeding a fixed token (no sampling).
// Each test runs once untimed (warm-up), then R timed repetitions; the figures are the mean and the
// sample standard deviation (n - 1) of tokens/s over the R runs (0 when R = 1, as llama-bench). Loading,
// tokenization and sampling are outside the timed region. Decode steps run as `generate` runs them
// (CpuDecoder where it applies); --modules times the module path instead, the baseline the decoder is
// compared with.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using TinyLlama.Autograd;
using TinyLlama.Backends.Cpu;
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
        var promptTokens = new Option<int>("--prompt-tokens", "-p") { Description = "Prompt length P of the pp test (one forward of P tokens)", DefaultValueFactory = _ => 512 }.Range(1, OptionRange.MaxCount);
        var tokens = new Option<int>("--tokens", "-n") { Description = "Tokens N of the tg test (N one-token forwards)", DefaultValueFactory = _ => 128 }.Range(1, OptionRange.MaxCount);
        var repeats = new Option<int>("--repeats", "-r") { Description = "Timed repetitions R after one warm-up (mean and sample standard deviation are reported)", DefaultValueFactory = _ => 5 }.Range(1, BenchCommand.MaxRepeats);
        var json = new Option<bool>("--json")
        {
            Description = "Print one JSON line: prefill_tokens_per_second and decode_tokens_per_second (the MEANS over R), " +
                "prefill_tokens_per_second_sd and decode_tokens_per_second_sd (sample standard deviations), threads, p, n, r",
        };
        var modules = new Option<bool>("--modules") { Description = "Decode through the model's modules instead of the CPU decoder (the baseline)" };
        var checkTensors = ModelCommands.CheckTensorsOption();
        var cmd = new Command("generate", "Prefill (pp) and decode (tg) throughput with a KV cache, as llama-bench measures them.") { model, preset, promptTokens, tokens, repeats, json, modules, checkTensors };
        cmd.SetAction(parse =>
        {
            string? path = parse.GetValue(model), presetName = parse.GetValue(preset);
            if ((path is null) == (presetName is null)) throw new CliException("give exactly one of --model or --preset", isUsage: true);
            int p = parse.GetValue(promptTokens), n = parse.GetValue(tokens), reps = parse.GetValue(repeats);
            var device = DeviceOption.Resolve(parse);
            LlamaForCausalLM lm;
            string name;
            long bytes;
            if (path is not null)
            {
                lm = ModelCommands.LoadModel(path, new ModelFiles { CheckTensors = parse.GetValue(checkTensors) }, device);
                CheckContext(lm.Config, p, n);
                name = Path.GetFileName(Path.TrimEndingDirectorySeparator(path));
                bytes = BytesOnDisk(path);
            }
            else
            {
                var config = ModelCommands.Preset(presetName!);
                CheckContext(config, p, n); // before the random weights are allocated
                lm = new LlamaForCausalLM(config, new Generator(0), DType.F32, device);
                name = presetName!;
                bytes = config.ParameterCount() * sizeof(float);
            }
            lm.Eval();
            var result = Measure(lm, p, n, reps, !parse.GetValue(modules));
            var output = parse.InvocationConfiguration.Output;
            int threads = CpuThreads.Count;
            if (parse.GetValue(json))
            {
                output.WriteLine(JsonLine.Format(
                    ("prefill_tokens_per_second", Math.Round(result.Prefill.Mean, 2)), ("decode_tokens_per_second", Math.Round(result.Decode.Mean, 2)),
                    ("prefill_tokens_per_second_sd", Math.Round(result.Prefill.Sd, 2)), ("decode_tokens_per_second_sd", Math.Round(result.Decode.Sd, 2)),
                    ("threads", threads), ("p", p), ("n", n), ("r", reps)));
                return ExitCodes.Success;
            }
            string backend = device.Kind == DeviceKind.Cpu ? "CPU" : device.ToString();
            string size = FormatBytes(bytes), parameters = FormatCount(lm.Config.ParameterCount());
            output.WriteLine($"| {"model",-24} | {"size",10} | {"params",10} | {"backend",-8} | {"threads",7} | {"test",8} | {"t/s",20} |");
            output.WriteLine($"| {new string('-', 24)} | {new string('-', 9)}: | {new string('-', 9)}: | {new string('-', 8)} | {new string('-', 6)}: | {new string('-', 7)}: | {new string('-', 19)}: |");
            foreach (var (test, stats) in new[] { ($"pp{p}", result.Prefill), ($"tg{n}", result.Decode) })
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {name,-24} | {size,10} | {parameters,10} | {backend,-8} | {threads,7} | {test,8} | {$"{stats.Mean:F2} ± {stats.Sd:F2}",20} |"));
            output.WriteLine($"({result.DecodePath}; mean ± sample sd of {reps} run{(reps == 1 ? "" : "s")} after a warm-up)");
            return ExitCodes.Success;
        });
        return cmd;
    }

    /// <summary>Mean and sample standard deviation of a run's tokens/s.</summary>
    internal readonly record struct Stats(double Mean, double Sd);

    /// <summary>pp and tg tokens/s over the timed repetitions, and which path decoded.</summary>
    internal readonly record struct Result(Stats Prefill, Stats Decode, string DecodePath);

    /// <summary>
    /// Mean and sample standard deviation (divisor n - 1) of <paramref name="values"/>; the deviation
    /// is 0 for a single value (llama-bench's convention).
    /// </summary>
    internal static Stats MeanAndSd(ReadOnlySpan<double> values)
    {
        if (values.Length == 0) throw new ArgumentException("no values", nameof(values));
        double sum = 0;
        foreach (var v in values) sum += v;
        double mean = sum / values.Length, squares = 0;
        foreach (var v in values) squares += (v - mean) * (v - mean);
        return new Stats(mean, values.Length > 1 ? Math.Sqrt(squares / (values.Length - 1)) : 0);
    }

    /// <summary>Runs the pp and tg tests: one untimed warm-up, then <paramref name="reps"/> timed runs of each.</summary>
    internal static Result Measure(LlamaForCausalLM model, int promptTokens, int newTokens, int reps, bool useCpuDecoder = true)
    {
        var gen = new Generator(1);
        var prompt = new int[promptTokens];
        for (int i = 0; i < prompt.Length; i++) prompt[i] = gen.NextInt(model.Config.VocabSize);
        int token = prompt[0]; // the tg test feeds this token at every step: no sampling is timed
        var cache = model.NewCache(1, Math.Max(promptTokens, newTokens));
        var prefill = new double[reps];
        var decode = new double[reps];
        using var _ = GradMode.NoGrad();
        string? why = "--modules";
        using var decoder = useCpuDecoder ? CpuDecoder.TryCreate(model, cache, out why) : null;
        for (int r = -1; r < reps; r++) // r = -1 is the warm-up, untimed
        {
            cache.Reset();
            long t0 = Stopwatch.GetTimestamp();
            var prefillLogits = TextGenerator.Forward(model, decoder, prompt, cache).ToArray();
            double tp = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            cache.Reset();
            t0 = Stopwatch.GetTimestamp();
            ReadOnlySpan<float> decoded = default;
            for (int s = 0; s < newTokens; s++)
                decoded = decoder is not null ? decoder.Step(token) : TextGenerator.ModuleForward(model, [token], cache);
            double td = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            if (r < 0)
            {
                // The speed of a model that computes NaN is no measurement: the warm-up's logits must be finite.
                Sampler.CheckFinite(prefillLogits);
                Sampler.CheckFinite(decoded);
                continue;
            }
            prefill[r] = promptTokens / tp;
            decode[r] = newTokens / td;
        }
        bool blocks = model.Parameters().Any(p => p.DType.IsQuantized());
        string path = decoder is null ? $"modules: {why}"
            : !blocks ? "CPU decoder"
            : decoder.Activations == DecoderActivations.Quantized
                ? "CPU decoder, Q8 activations and integer dot products" + (decoder.CanPrefill ? " (prefill too)" : $" (prefill on the modules: {decoder.PrefillUnsupported})")
                : "CPU decoder, f32 activations";
        return new Result(MeanAndSd(prefill), MeanAndSd(decode), path);
    }

    private static void CheckContext(LlamaConfig config, int p, int n)
    {
        int ctx = config.MaxPositionEmbeddings;
        if (p > ctx) throw new CliException($"-p/--prompt-tokens {p} exceeds the model's context of {ctx} tokens", isUsage: true);
        if (n > ctx) throw new CliException($"-n/--tokens {n} exceeds the model's context of {ctx} tokens", isUsage: true);
    }

    // The checkpoint's size on disk: the file, or every file of a checkpoint directory.
    private static long BytesOnDisk(string path) =>
        File.Exists(path) ? new FileInfo(path).Length
        : new DirectoryInfo(path).EnumerateFiles("*", SearchOption.TopDirectoryOnly).Sum(f => f.Length);

    private static string FormatBytes(long bytes) =>
        bytes >= 1L << 30 ? FormattableString.Invariant($"{bytes / (double)(1L << 30):F2} GiB") : FormattableString.Invariant($"{bytes / (double)(1 << 20):F2} MiB");

    private static string FormatCount(long count) =>
        count >= 1_000_000_000 ? FormattableString.Invariant($"{count / 1e9:F2} B")
        : count >= 1_000_000 ? FormattableString.Invariant($"{count / 1e6:F2} M")
        : FormattableString.Invariant($"{count / 1e3:F2} K");
}
