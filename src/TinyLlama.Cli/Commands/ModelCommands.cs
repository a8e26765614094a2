// The model verbs: info, perplexity, generate. A model PATH is a Hugging Face directory
// (config.json + safetensors + tokenizer.model or tokenizer.json) or a llama2.c .bin file
// (with --tokenizer when text is involved). Exact output formats: other tools script against them.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;

namespace TinyLlama.Cli.Commands;

internal static class ModelCommands
{
    public static Option<string> ModelOption(bool required = true) => new("--model")
    {
        Description = "A Hugging Face model directory, a GGUF file, a llama2.c .bin file or a PEFT adapter directory",
        Required = required,
    };

    /// <summary>--check-tensors (llama.cpp's flag): scan every weight for NaN and infinity at load.</summary>
    public static Option<bool> CheckTensorsOption() => new("--check-tensors")
    {
        Description = "Scan every weight (floats and block scales, adapters included) for NaN or infinity at load and name the first bad tensor",
    };

    public static Option<string?> TokenizerOption() => new("--tokenizer")
    {
        Description = "tokenizer.model or tokenizer.json (default: the one inside the model directory)",
    };

    public static Command CreateInfo()
    {
        var model = ModelOption(required: false);
        var preset = new Option<string?>("--preset") { Description = "A built-in shape with random weights: " + string.Join(", ", LlamaConfig.PresetNames) };
        var checkTensors = CheckTensorsOption();
        var cmd = new Command("info", "Print a model's config, parameter count, dtype and size.") { model, preset, checkTensors };
        cmd.SetAction(parse =>
        {
            var output = parse.InvocationConfiguration.Output;
            string? path = parse.GetValue(model), presetName = parse.GetValue(preset);
            if ((path is null) == (presetName is null)) throw new CliException("give exactly one of --model or --preset", isUsage: true);
            LlamaConfig config;
            long bytes;
            string dtype;
            if (path is not null)
            {
                var ckpt = LoadCheckpoint(path, new ModelFiles { CheckTensors = parse.GetValue(checkTensors) });
                config = ckpt.Config;
                bytes = ckpt.Weights.Values.Sum(t => t.Storage.Bytes > 0 ? (long)t.Numel * t.DType.SizeOf() : 0);
                dtype = string.Join(",", ckpt.Weights.Values.Select(t => t.DType.Name()).Distinct());
            }
            else
            {
                config = Preset(presetName!);
                bytes = config.ParameterCount() * 4;
                dtype = "float32 (random weights)";
            }
            output.WriteLine(config.ToJson());
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"parameters: {config.ParameterCount():N0}"));
            output.WriteLine($"dtype: {dtype}");
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"bytes: {bytes:N0} ({bytes / (1024.0 * 1024.0):F1} MiB)"));
            return ExitCodes.Success;
        });
        return cmd;
    }

    public static Command CreatePerplexity()
    {
        var model = ModelOption();
        var tokenizer = TokenizerOption();
        var text = new Option<string?>("--text") { Description = "The text to score" };
        var file = new Option<string?>("--file") { Description = "A UTF-8 file whose text to score" };
        var idsFile = new Option<string?>("--ids-file") { Description = "Token ids to score instead of text: one sequence per line (comma- or space-separated, BOS included)" };
        var json = new Option<bool>("--json") { Description = "Print {\"tokens\": N, \"mean_nll\": x, \"perplexity\": y}" };
        var checkTensors = CheckTensorsOption();
        var cmd = new Command("perplexity", "Mean negative log-likelihood and perplexity of a text (ids = BOS + encode(text)) or of token-id sequences.") { model, tokenizer, text, file, idsFile, json, checkTensors };
        cmd.SetAction(parse =>
        {
            string? t = parse.GetValue(text), f = parse.GetValue(file), idsPath = parse.GetValue(idsFile);
            if ((t is null ? 0 : 1) + (f is null ? 0 : 1) + (idsPath is null ? 0 : 1) != 1) throw new CliException("give exactly one of --text, --file or --ids-file", isUsage: true);
            if (f is not null) t = TextFileOption.Read(f, "--file");
            if (idsPath is not null) TextFileOption.RequireFile(idsPath, "--ids-file");
            var path = parse.GetValue(model)!;
            var files = new ModelFiles { CheckTensors = parse.GetValue(checkTensors) };
            var lm = LoadModel(path, files, DeviceOption.Resolve(parse));
            List<int[]> sequences;
            if (idsPath is not null)
            {
                // Each sequence scores its tokens after the first, within the model's context.
                sequences = QuantizeCommand.ReadIdsFile(idsPath, lm.Config.VocabSize, "--ids-file", 2, lm.Config.MaxPositionEmbeddings);
                if (sequences.Count == 0) throw new CliException($"--ids-file: {idsPath} holds no sequences");
            }
            else
            {
                var tok = LoadTokenizer(path, parse.GetValue(tokenizer), files);
                sequences = [tok.Encode(t!, addBos: true)];
            }
            // Token-weighted over the sequences: the mean NLL of every predicted token.
            double sum = 0;
            int count = 0, tokens = 0;
            foreach (var ids in sequences)
            {
                var (meanNll, predicted) = Perplexity.MeanNll(lm, ids);
                sum += meanNll * predicted;
                count += predicted;
                tokens += ids.Length;
            }
            double mean = sum / count;
            var output = parse.InvocationConfiguration.Output;
            if (parse.GetValue(json))
                output.WriteLine(JsonLine.Format(("tokens", tokens), ("mean_nll", mean), ("perplexity", Math.Exp(mean))));
            else
                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"tokens: {tokens}  mean NLL: {mean:F6}  perplexity: {Math.Exp(mean):F4}  ({count} predicted{(sequences.Count > 1 ? $", {sequences.Count} sequences" : "")})"));
            return ExitCodes.Success;
        });
        return cmd;
    }

    public static Command CreateGenerate()
    {
        var model = ModelOption();
        var tokenizer = TokenizerOption();
        var prompt = new Option<string?>("--prompt") { Description = "Prompt text (the model sees BOS + encode(prompt))" };
        var promptIds = new Option<string?>("--prompt-ids") { Description = "Prompt as comma-separated token ids, e.g. 1,450,11148" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Number of tokens to generate at most", Required = true }.Range(0, OptionRange.MaxCount);
        var sampling = new SamplingFlags();
        var json = new Option<bool>("--json") { Description = "Print {\"ids\": [...], \"text\": \"...\", \"tokens_per_second\": x} instead of streaming text" };
        var checkTensors = CheckTensorsOption();
        var cmd = new Command("generate", "Generate text from a prompt, streaming tokens as they are chosen.")
            { model, tokenizer, prompt, promptIds, maxTokens };
        sampling.AddTo(cmd);
        cmd.Options.Add(json);
        cmd.Options.Add(checkTensors);
        cmd.SetAction(parse =>
        {
            string? p = parse.GetValue(prompt), pIds = parse.GetValue(promptIds);
            if ((p is null) == (pIds is null)) throw new CliException("give exactly one of --prompt or --prompt-ids", isUsage: true);
            var options = sampling.Read(parse);
            int max = parse.GetValue(maxTokens);
            var parsedIds = pIds is not null ? ParseIds(pIds) : null; // usage errors before any file is read
            var path = parse.GetValue(model)!;
            var files = new ModelFiles { CheckTensors = parse.GetValue(checkTensors) };
            var lm = LoadModel(path, files, DeviceOption.Resolve(parse));
            CheckCacheMemory(lm.Config, Math.Min(lm.Config.MaxPositionEmbeddings, (long)(parsedIds?.Length ?? 0) + max), $"--max-tokens {max}", "lower --max-tokens");
            bool asJson = parse.GetValue(json);
            var tokPath = parse.GetValue(tokenizer);
            LlamaTokenizer? tok = p is not null || !asJson || HasTokenizer(path, tokPath, files) ? LoadTokenizer(path, tokPath, files) : null;
            var ids = new List<int>();
            if (p is not null)
            {
                ids.AddRange(tok!.Encode(p, addBos: true));
            }
            else ids.AddRange(parsedIds!);
            var output = parse.InvocationConfiguration.Output;
            var stream = !asJson ? tok!.CreateStreamDecoder() : null;
            var generated = new List<int>();
            var sw = Stopwatch.StartNew();
            foreach (int id in TextGenerator.Generate(lm, ids, max, options, lm.Config.EosTokenIds.ToArray()))
            {
                generated.Add(id);
                if (stream is not null)
                {
                    output.Write(stream.Push(id));
                    output.Flush();
                }
            }
            double seconds = sw.Elapsed.TotalSeconds;
            if (stream is not null)
            {
                output.WriteLine(stream.Flush());
                return ExitCodes.Success;
            }
            var text = tok?.Decode(generated) ?? "";
            output.WriteLine(JsonLine.Format(("ids", generated), ("text", text), ("tokens_per_second", generated.Count / Math.Max(seconds, 1e-9))));
            return ExitCodes.Success;
        });
        return cmd;
    }

    /// <summary>
    /// A usage error naming <paramref name="what"/> when a KV cache of <paramref name="tokens"/> positions
    /// (keys and values, f32, every layer) needs more memory than this process can have.
    /// </summary>
    internal static void CheckCacheMemory(LlamaConfig config, long tokens, string what, string hint) =>
        OptionRange.CheckMemory($"{what} (a KV cache of {tokens:N0} tokens)", 2.0 * config.NumHiddenLayers * tokens * config.NumKeyValueHeads * config.HeadDim * sizeof(float), hint);

    internal static int[] ParseIds(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var ids = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out ids[i]))
                throw new CliException($"--prompt-ids: '{parts[i]}' is not a token id", isUsage: true);
        if (ids.Length == 0) throw new CliException("--prompt-ids: no ids given", isUsage: true);
        return ids;
    }

    internal static LlamaConfig Preset(string name)
    {
        try { return LlamaConfig.Preset(name); }
        catch (ArgumentException) { throw new CliException($"--preset: unknown preset '{name}'; expected one of {string.Join(", ", LlamaConfig.PresetNames)}", isUsage: true); }
    }

    /// <summary>The config and weights of a model PATH (a GGUF file through <paramref name="files"/>).</summary>
    internal static ModelCheckpoint LoadCheckpoint(string path, ModelFiles files, string flag = "--model")
    {
        if (!File.Exists(path) && !Directory.Exists(path)) throw new CliException($"{flag}: {path} does not exist");
        if (File.Exists(path)) TextFileOption.RequireRegular(path, flag);
        var checkpoint = IsGguf(path) ? GgufModel.Load(files.Gguf(path)) : Checkpoint.Load(path);
        if (files.CheckTensors) WeightCheck.Check(checkpoint.Weights, path);
        return checkpoint;
    }

    /// <summary>
    /// Loads a model PATH (HF directory, llama2.c .bin, GGUF or PEFT adapter directory) in eval mode, with the
    /// PEFT adapter in <paramref name="adapterDir"/> over it when given. Block-quantized weights stay in their
    /// blocks unless <paramref name="dequantize"/> (for what needs float weights: quantizing again, merging an
    /// adapter). A GGUF file is opened through <paramref name="files"/>, so the tokenizer can be read from it
    /// without parsing it again.
    /// </summary>
    internal static LlamaForCausalLM LoadModel(string path, ModelFiles files, Device? device = null, string? adapterDir = null, bool dequantize = false, string flag = "--model")
    {
        if (adapterDir is not null)
        {
            if (!TinyLlama.Training.Lora.PeftAdapter.IsAdapterDirectory(adapterDir))
                throw new CliException($"--adapter: {adapterDir} is not a PEFT adapter directory (expected {TinyLlama.Training.Lora.PeftAdapter.ConfigFileName} in it)");
            if (Directory.Exists(path) && TinyLlama.Training.Lora.PeftAdapter.IsAdapterDirectory(path))
                throw new CliException($"--adapter: --model {path} is an adapter directory already; give its base model as --model", isUsage: true);
            var adapted = LoadModel(path, files, device, dequantize: dequantize);
            TinyLlama.Training.Lora.PeftAdapter.Load(adapterDir, adapted);
            CheckAdapterTensors(adapted, adapterDir, files);
            adapted.Eval();
            return adapted;
        }
        if (Directory.Exists(path) && TinyLlama.Training.Lora.PeftAdapter.IsAdapterDirectory(path))
        {
            // A PEFT adapter directory: load its base model, then the adapter on top. When the base is itself an
            // adapter (a chain, checked for loops and length), each lower adapter is merged into the weights
            // before the next goes on: W + s1 B1 A1 + s2 B2 A2, as PEFT computes stacked adapters.
            var (chain, basePath) = TinyLlama.Training.Lora.PeftAdapter.ResolveChain(path);
            string pointer = Path.Combine(chain[^1], TinyLlama.Training.Lora.PeftAdapter.ConfigFileName);
            if (basePath is null || (!Directory.Exists(basePath) && !File.Exists(basePath)))
                throw new CliException($"{pointer}: base_model_name_or_path {MessageText.Quote(basePath)} is not a model on this machine");
            // A path that exists but holds no model: the error names the adapter_config.json that pointed there,
            // not only the directory (which may be anywhere: "/", "/dev").
            if (Directory.Exists(basePath) && !File.Exists(Path.Combine(basePath, Checkpoint.ConfigName)))
                throw new CliException($"{pointer}: base_model_name_or_path {MessageText.Quote(basePath)} is a directory with no {Checkpoint.ConfigName} (not a model directory)");
            var baseModel = LoadModel(basePath, files, device, dequantize: dequantize || chain.Count > 1, flag: $"{pointer}: base_model_name_or_path");
            for (int i = chain.Count - 1; i >= 0; i--)
            {
                TinyLlama.Training.Lora.PeftAdapter.Load(chain[i], baseModel);
                CheckAdapterTensors(baseModel, chain[i], files); // before a merge folds it into the base weights
                if (i > 0) TinyLlama.Training.Lora.Lora.Merge(baseModel);
            }
            baseModel.Eval();
            return baseModel;
        }
        var ckpt = LoadCheckpoint(path, files, flag);
        var weights = !dequantize ? ckpt.Weights
            : ckpt.Weights.ToDictionary(kv => kv.Key, kv => kv.Value.DType.IsQuantized() ? Quantize.Dequantize(kv.Value) : kv.Value);
        var model = LlamaForCausalLM.FromWeights(ckpt.Config, weights, DType.F32, device ?? Device.Cpu, source: path);
        model.Eval();
        return model;
    }

    // With --check-tensors, the adapter's weights (the LoRA A and B matrices over the scanned base) too.
    private static void CheckAdapterTensors(LlamaForCausalLM model, string adapterDir, ModelFiles files)
    {
        if (!files.CheckTensors) return;
        var lora = model.NamedParameters().Where(p => p.Name.Contains(".lora_", StringComparison.Ordinal)).ToDictionary(p => p.Name, p => p.Value);
        WeightCheck.Check(lora, adapterDir);
    }

    internal static bool HasTokenizer(string modelPath, string? tokenizerPath, ModelFiles files) =>
        tokenizerPath is not null
        || (Directory.Exists(modelPath) && (File.Exists(Path.Combine(modelPath, "tokenizer.model")) || File.Exists(Path.Combine(modelPath, "tokenizer.json"))))
        || (IsGguf(modelPath) && files.Gguf(modelPath).Metadata.ContainsKey(GgufModel.Keys.TokenizerModel));

    /// <summary>A chat's tokenizer: --tokenizer, else the model directory's, else the one sft wrote beside the adapter.</summary>
    internal static LlamaTokenizer LoadTokenizer(string modelPath, string? tokenizerPath, ModelFiles files, string? adapterDir) =>
        adapterDir is not null && !HasTokenizer(modelPath, tokenizerPath, files) && HasTokenizer(adapterDir, null, files)
            ? LoadTokenizer(adapterDir, null, files)
            : LoadTokenizer(modelPath, tokenizerPath, files);

    internal static LlamaTokenizer LoadTokenizer(string modelPath, string? tokenizerPath, ModelFiles files)
    {
        string? path = tokenizerPath;
        if (path is null && (Directory.Exists(modelPath) || IsGguf(modelPath))) path = BaseModelPath(modelPath, files);
        if (path is null) throw new CliException($"--tokenizer is needed: {modelPath} is a llama2.c file with no tokenizer beside it", isUsage: true);
        return IsGguf(path) ? GgufModel.LoadTokenizer(files.Gguf(path)) : LlamaTokenizer.Load(path);
    }

    /// <summary>The model an adapter directory without a tokenizer of its own was trained on; otherwise <paramref name="path"/> itself.</summary>
    internal static string BaseModelPath(string path, ModelFiles files)
    {
        if (!Directory.Exists(path) || !TinyLlama.Training.Lora.PeftAdapter.IsAdapterDirectory(path)) return path;
        var (chain, basePath) = TinyLlama.Training.Lora.PeftAdapter.ResolveChain(path);
        foreach (var adapter in chain)
            if (HasTokenizer(adapter, null, files)) return adapter;
        return basePath ?? path;
    }

    private static bool IsGguf(string path) => File.Exists(path) && path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase);
}

/// <summary>
/// The model files one command reads, each parsed once: a GGUF file's header, metadata and tensor table are
/// read the first time <see cref="Gguf"/> is asked for it, and the same <see cref="GgufFile"/> then serves
/// the weights (<see cref="ModelCommands.LoadModel"/>), the tokenizer check and the tokenizer. One per command.
/// </summary>
internal sealed class ModelFiles
{
    private readonly Dictionary<string, GgufFile> gguf = new(StringComparer.Ordinal);

    /// <summary>Scan every weight loaded for NaN and infinity (--check-tensors).</summary>
    public bool CheckTensors { get; init; }

    /// <summary>How many GGUF files were parsed (each once).</summary>
    public int Parsed => gguf.Count;

    /// <summary>The GGUF file at <paramref name="path"/>, parsed on the first call for its full path.</summary>
    public GgufFile Gguf(string path)
    {
        string full = Path.GetFullPath(path);
        if (!gguf.TryGetValue(full, out var file)) gguf[full] = file = GgufFile.Open(path);
        return file;
    }
}

/// <summary>The sampling flags shared by generate and chat, and their check (bad values are usage errors).</summary>
internal sealed class SamplingFlags
{
    // Ranges wide enough for any use (a temperature of 1000 is already uniform sampling), checked at parse time.
    private readonly Option<double> temperature = new Option<double>("--temperature") { Description = "0 for greedy (default)", DefaultValueFactory = _ => 0 }.Range(0, 1000);
    private readonly Option<int> topK = new Option<int>("--top-k") { Description = "Sample from the k most likely tokens (0 = all)" }.Range(0, OptionRange.MaxCount);
    private readonly Option<double> topP = new Option<double>("--top-p") { Description = "Nucleus sampling threshold (1 = off)", DefaultValueFactory = _ => 1.0 }.Range(0, 1, minOpen: true);
    private readonly Option<double> penalty = new Option<double>("--repetition-penalty") { Description = "Penalty for tokens already present (1 = off)", DefaultValueFactory = _ => 1.0 }.Range(0, 1000, minOpen: true);
    private readonly Option<ulong> seed = new("--seed") { Description = "Sampling seed (same seed, same text)" };

    public void AddTo(Command cmd)
    {
        cmd.Options.Add(temperature);
        cmd.Options.Add(topK);
        cmd.Options.Add(topP);
        cmd.Options.Add(penalty);
        cmd.Options.Add(seed);
    }

    public SamplingOptions Read(ParseResult parse)
    {
        var options = new SamplingOptions(parse.GetValue(temperature), parse.GetValue(topK), parse.GetValue(topP), parse.GetValue(penalty), parse.GetValue(seed));
        try { options.Validate(); }
        catch (ArgumentException e) { throw new CliException(e.Message, isUsage: true); }
        return options;
    }
}

/// <summary>Scores a token sequence: mean NLL of ids[1..] given their prefixes.</summary>
internal static class Perplexity
{
    public static (double MeanNll, int Count) MeanNll(LlamaForCausalLM model, IReadOnlyList<int> ids)
    {
        if (ids.Count < 2) throw new CliException("perplexity needs at least one token after BOS");
        if (ids.Count > model.Config.MaxPositionEmbeddings)
            throw new CliException($"text is {ids.Count} tokens; the model's context is {model.Config.MaxPositionEmbeddings}");
        using var _ = GradMode.NoGrad();
        var input = Tensor.FromArray(ids.Take(ids.Count - 1).ToArray(), [1, ids.Count - 1]);
        var targets = Tensor.FromArray(ids.Skip(1).ToArray(), [1, ids.Count - 1]);
        var loss = Functional.CrossEntropy(model.Forward(input).To(DType.F64), targets);
        double nll = loss.Item();
        if (!double.IsFinite(nll))
            throw new CliException($"the model computed a {(double.IsNaN(nll) ? "NaN" : "infinite")} loss over {ids.Count} tokens: its weights hold NaN or infinite values, or its activations overflow (--check-tensors scans the weights)");
        return (nll, ids.Count - 1);
    }
}
