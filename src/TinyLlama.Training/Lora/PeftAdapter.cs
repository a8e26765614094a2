// LoRA adapters on disk in Hugging Face PEFT's layout, so adapters move both ways between this engine
// and PEFT (PeftModel.from_pretrained / save_pretrained):
//
//   <dir>/adapter_config.json         PEFT's LoraConfig.to_dict(), written by save_pretrained with
//                                     json.dumps(indent=2, sort_keys=True) (peft/config.py)
//   <dir>/adapter_model.safetensors   get_peft_model_state_dict(model) (peft/utils/save_and_load.py),
//                                     with metadata {"format": "pt"}
//
// Tensor names: PeftModel keeps the wrapped model as base_model (a LoraModel) whose .model is the
// LlamaForCausalLM, so a LoRA weight's key in PeftModel.state_dict() is
// "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"; get_peft_model_state_dict
// keeps only the "lora_" keys and removes the adapter name ("default"), giving
// "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" with shape [r, in] (lora_B: [out, r]).
//
// Both files are written atomically (temporary file in the same directory, flushed, renamed over the
// target), the weights first and the config last, so a directory with a config always has its weights.
// Every problem with a file's contents is a one-line InvalidDataException naming the file; a missing
// file is a FileNotFoundException naming it. base_model_name_or_path may name another adapter directory;
// ResolveChain follows such chains with a bound on their length and refuses one that loops.
using System.Globalization;
using System.Text.Json;
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Tensors;

namespace TinyLlama.Training.Lora;

/// <summary>Saving and loading LoRA adapters as Hugging Face PEFT does.</summary>
public static class PeftAdapter
{
    /// <summary>PEFT's CONFIG_NAME.</summary>
    public const string ConfigFileName = "adapter_config.json";

    /// <summary>PEFT's SAFETENSORS_WEIGHTS_NAME.</summary>
    public const string WeightsFileName = "adapter_model.safetensors";

    /// <summary>What PeftModel puts before the wrapped model's own parameter names.</summary>
    public const string KeyPrefix = "base_model.model.";

    /// <summary>True when <paramref name="dir"/> holds an adapter_config.json (PEFT's own test for an adapter directory).</summary>
    public static bool IsAdapterDirectory(string dir) =>
        !string.IsNullOrEmpty(dir) && Directory.Exists(dir) && File.Exists(Path.Combine(dir, ConfigFileName));

    /// <summary>The most adapters <see cref="ResolveChain"/> follows before it gives up.</summary>
    public const int MaxChainLength = 8;

    /// <summary>
    /// Follows base_model_name_or_path from the adapter in <paramref name="dir"/> through every adapter
    /// directory it leads to. Returns those adapters (<paramref name="dir"/> first, each one's base next) and
    /// the first path that is not an adapter directory (null when the last adapter names no base). A chain
    /// that comes back to an adapter already in it, or holds more than <see cref="MaxChainLength"/>
    /// adapters, is a one-line <see cref="InvalidDataException"/> naming the chain. Relative base paths are
    /// taken as given (from the current directory), as when the model is loaded.
    /// </summary>
    public static (IReadOnlyList<string> Adapters, string? BaseModel) ResolveChain(string dir)
    {
        var chain = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        string? current = dir;
        while (current is not null && IsAdapterDirectory(current))
        {
            string identity = Identity(current);
            if (!seen.Add(identity))
                throw new InvalidDataException($"{Path.Combine(chain[^1], ConfigFileName)}: base_model_name_or_path leads back to an adapter already in the chain {string.Join(" -> ", chain.Append(current))}");
            chain.Add(current);
            if (chain.Count > MaxChainLength)
                throw new InvalidDataException($"{Path.Combine(dir, ConfigFileName)}: more than {MaxChainLength} adapters stacked through base_model_name_or_path ({string.Join(" -> ", chain)} -> ...)");
            current = ReadConfig(current).BaseModelNameOrPath;
        }
        return (chain, current);
    }

    // The directory itself, whichever spelling or symbolic link reached it.
    private static string Identity(string dir)
    {
        var info = new DirectoryInfo(Path.GetFullPath(dir));
        string full = (info.LinkTarget is null ? info : info.ResolveLinkTarget(returnFinalTarget: true) ?? info).FullName;
        return Path.TrimEndingDirectorySeparator(full);
    }

    /// <summary>
    /// Writes the model's adapters to <paramref name="dir"/> (created if needed) as adapter_model.safetensors
    /// and adapter_config.json. The adapters on the model must be exactly those <paramref name="config"/>
    /// describes (same targets in every layer, same rank and alpha). <paramref name="baseModelPath"/> becomes
    /// base_model_name_or_path (null when not given).
    /// </summary>
    public static void Save(string dir, LlamaForCausalLM model, LoraConfig config, string? baseModelPath = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var targets = Lora.TargetLayers(model, config);
        var adapted = Lora.AdaptedLayers(model);
        foreach (var (name, layer) in targets)
        {
            if (layer is not LoraLinear lora) throw new ArgumentException($"PEFT save: {name} is a target of the config but has no LoRA adapter");
            if (lora.Rank != config.Rank || lora.Alpha != config.Alpha)
                throw new ArgumentException($"PEFT save: {name} has r={lora.Rank}, alpha={lora.Alpha} but the config says r={config.Rank}, alpha={config.Alpha}");
        }
        if (adapted.Count != targets.Count)
        {
            var extra = adapted.First(a => !targets.Any(t => ReferenceEquals(t.Layer, a.Layer)));
            throw new ArgumentException($"PEFT save: {extra.Name} has a LoRA adapter but is not a target of the config");
        }

        Directory.CreateDirectory(dir);
        var tensors = Lora.AdapterStateDict(model).ToDictionary(kv => KeyPrefix + kv.Key, kv => kv.Value, StringComparer.Ordinal);
        Safetensors.Save(Path.Combine(dir, WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        WriteAtomically(Path.Combine(dir, ConfigFileName), ConfigJson(config, baseModelPath));
    }

    /// <summary>
    /// Reads the adapter in <paramref name="dir"/>, attaches it to <paramref name="model"/> (which must have
    /// no adapters yet) with <see cref="Lora.Apply"/> (base parameters frozen, adapters trainable, dropout
    /// masks from <paramref name="generator"/>, default a fresh Generator(0)) and copies its weights in.
    /// Everything is checked before the model is touched. Returns the adapter's config.
    /// </summary>
    public static LoraConfig Load(string dir, LlamaForCausalLM model, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var (config, _) = ReadConfig(dir);
        string configPath = Path.Combine(dir, ConfigFileName);
        string weightsPath = Path.Combine(dir, WeightsFileName);
        if (!File.Exists(weightsPath))
        {
            if (File.Exists(Path.Combine(dir, "adapter_model.bin")))
                throw new InvalidDataException($"{Path.Combine(dir, "adapter_model.bin")}: pickled PyTorch adapters are not supported; save the adapter with safe_serialization=True");
            throw new FileNotFoundException($"{weightsPath}: adapter weights not found", weightsPath);
        }
        var file = SafetensorsFile.Open(weightsPath);

        // Expected: every targeted layer's A [r, in] and B [out, r], nothing else.
        var targets = Lora.TargetLayers(model, config);
        var expected = new Dictionary<string, int[]>(StringComparer.Ordinal);
        foreach (var (name, layer) in targets)
        {
            expected[KeyPrefix + name + ".lora_A.weight"] = [config.Rank, layer.InFeatures];
            expected[KeyPrefix + name + ".lora_B.weight"] = [layer.OutFeatures, config.Rank];
        }
        foreach (var (key, shape) in expected)
        {
            if (!file.Contains(key)) throw new InvalidDataException($"{weightsPath}: tensor {MessageText.Quote(key)} is missing (target_modules in {configPath} asks for it)");
            var info = file.GetInfo(key);
            if (!info.DType.IsFloat()) throw new InvalidDataException($"{weightsPath}: tensor {MessageText.Quote(key)} has dtype {info.DType.Name()}, expected a floating-point type");
            if (!info.Shape.AsSpan().SequenceEqual(shape))
                throw new InvalidDataException($"{weightsPath}: tensor {MessageText.Quote(key)} has shape {Shapes.Format(info.Shape)}, expected {Shapes.Format(shape)} (r={config.Rank} from {configPath})");
        }
        foreach (var key in file.Names)
            if (!expected.ContainsKey(key))
                throw new InvalidDataException($"{weightsPath}: unexpected tensor {MessageText.Quote(key)} (not a LoRA weight of a layer that target_modules in {configPath} names)");
        var existing = Lora.AdaptedLayers(model);
        if (existing.Count > 0) throw new InvalidOperationException($"the model already has LoRA adapters (e.g. on {existing[0].Name}); merge or remove them first");

        var adapted = Lora.Apply(model, config, generator ?? new Generator(0));
        using (GradMode.NoGrad())
        {
            foreach (var (name, layer) in adapted)
            {
                layer.LoraA.Weight.CopyFrom_(file.Get(KeyPrefix + name + ".lora_A.weight"));
                layer.LoraB.Weight.CopyFrom_(file.Get(KeyPrefix + name + ".lora_B.weight"));
            }
        }
        return config;
    }

    /// <summary>
    /// Parses and checks <paramref name="dir"/>/adapter_config.json: peft_type "LORA", r, lora_alpha and
    /// target_modules required (a list of names, or PEFT's "all-linear"); lora_dropout defaults to 0 as in
    /// PEFT. Options this engine does not implement (bias other than "none", fan_in_fan_out, use_dora,
    /// use_rslora, lora_bias, modules_to_save, layers_to_transform, rank_pattern, alpha_pattern,
    /// layer_replication, a task_type other than CAUSAL_LM, a regular expression as target_modules) are
    /// rejected rather than silently ignored.
    /// </summary>
    public static (LoraConfig Config, string? BaseModelNameOrPath) ReadConfig(string dir)
    {
        string path = Path.Combine(dir, ConfigFileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: adapter config not found", path);
        JsonDocument doc;
        byte[] bytes = JsonText.ReadBytes(path);   // strict UTF-8, no lone surrogate escape
        try
        {
            doc = JsonDocument.Parse(bytes);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({JsonText.Describe(e)})");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{path}: expected a JSON object, got {root.ValueKind}");

            string peftType = RequireString(path, root, "peft_type");
            if (peftType != "LORA") throw new InvalidDataException($"{path}: peft_type is {MessageText.Quote(peftType)}, only \"LORA\" is supported");
            var r = Require(path, root, "r");
            if (r.ValueKind != JsonValueKind.Number || !r.TryGetInt32(out int rank) || rank < 1)
                throw new InvalidDataException($"{path}: field \"r\" must be a positive integer, got {MessageText.Escape(r.GetRawText())}");
            var a = Require(path, root, "lora_alpha");
            if (a.ValueKind != JsonValueKind.Number || !double.IsFinite(a.GetDouble()))
                throw new InvalidDataException($"{path}: field \"lora_alpha\" must be a number, got {MessageText.Escape(a.GetRawText())}");
            double alpha = a.GetDouble();
            double dropout = 0.0;
            if (root.TryGetProperty("lora_dropout", out var d) && d.ValueKind != JsonValueKind.Null)
            {
                if (d.ValueKind != JsonValueKind.Number || !(d.GetDouble() >= 0 && d.GetDouble() < 1))
                    throw new InvalidDataException($"{path}: field \"lora_dropout\" must be a number in [0, 1), got {MessageText.Escape(d.GetRawText())}");
                dropout = d.GetDouble();
            }
            var targets = ReadTargets(path, Require(path, root, "target_modules"));

            RejectUnless(path, root, "bias", v => v.ValueKind == JsonValueKind.String && v.GetString() == "none", "only \"none\" is supported");
            RejectUnless(path, root, "task_type", v => v.ValueKind == JsonValueKind.String && v.GetString() == "CAUSAL_LM", "only CAUSAL_LM is supported");
            foreach (var flag in new[] { "fan_in_fan_out", "use_dora", "use_rslora", "lora_bias" })
                RejectUnless(path, root, flag, v => v.ValueKind == JsonValueKind.False, "must be false (not supported)");
            foreach (var list in new[] { "modules_to_save", "layers_to_transform", "layer_replication" })
                RejectUnless(path, root, list, v => v.ValueKind == JsonValueKind.Array && v.GetArrayLength() == 0, "is not supported");
            foreach (var pattern in new[] { "rank_pattern", "alpha_pattern" })
                RejectUnless(path, root, pattern, v => v.ValueKind == JsonValueKind.Object && !v.EnumerateObject().Any(), "is not supported (one rank and alpha for every layer)");

            string? baseModel = root.TryGetProperty("base_model_name_or_path", out var b) && b.ValueKind == JsonValueKind.String ? b.GetString() : null;
            return (new LoraConfig(rank, alpha, dropout, targets), baseModel);
        }
    }

    private static List<string> ReadTargets(string path, JsonElement t)
    {
        if (t.ValueKind == JsonValueKind.String)
        {
            // PEFT's INCLUDE_LINEAR_LAYERS_SHORTHAND: every linear layer except the output head.
            if (t.GetString() == "all-linear") return [.. LoraConfig.AllTargets];
            throw new InvalidDataException($"{path}: field \"target_modules\" is the regular expression \"{MessageText.Escape(t.GetString()!)}\"; only a list of module names (or \"all-linear\") is supported");
        }
        if (t.ValueKind != JsonValueKind.Array || t.GetArrayLength() == 0)
            throw new InvalidDataException($"{path}: field \"target_modules\" must be a non-empty list of module names, got {MessageText.Escape(t.GetRawText())}");
        var names = new List<string>();
        foreach (var e in t.EnumerateArray())
        {
            string? name = e.ValueKind == JsonValueKind.String ? e.GetString() : null;
            string? canonical = name is null ? null : LoraConfig.CanonicalTarget(name);
            if (canonical is null)
                throw new InvalidDataException($"{path}: unknown target module {MessageText.Escape(e.GetRawText())} (expected {string.Join(", ", LoraConfig.AllTargets)})");
            names.Add(canonical);
        }
        return names;
    }

    private static JsonElement Require(string path, JsonElement root, string field) =>
        root.TryGetProperty(field, out var v) && v.ValueKind != JsonValueKind.Null ? v : throw new InvalidDataException($"{path}: missing field \"{field}\"");

    private static string RequireString(string path, JsonElement root, string field)
    {
        var v = Require(path, root, field);
        return v.ValueKind == JsonValueKind.String ? v.GetString()! : throw new InvalidDataException($"{path}: field \"{field}\" must be a string, got {MessageText.Escape(v.GetRawText())}");
    }

    /// <summary>An optional field that, when present and not null, must satisfy <paramref name="ok"/>.</summary>
    private static void RejectUnless(string path, JsonElement root, string field, Func<JsonElement, bool> ok, string why)
    {
        if (root.TryGetProperty(field, out var v) && v.ValueKind != JsonValueKind.Null && !ok(v))
            throw new InvalidDataException($"{path}: field \"{field}\" is {MessageText.Escape(v.GetRawText())}: {why}");
    }

    /// <summary>
    /// adapter_config.json as PEFT's save_pretrained writes it for this config: every LoraConfig field
    /// PEFT has written since 0.7 that bears on plain LoRA, keys sorted, two-space indent, floats with a
    /// decimal point as Python prints them. Targets are listed in the model's order (PEFT keeps them in a
    /// set, so its order is arbitrary).
    /// </summary>
    internal static byte[] ConfigJson(LoraConfig config, string? baseModelPath)
    {
        var targets = config.CanonicalTargets();
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            // Keys in sorted order, as json.dumps(sort_keys=True).
            w.WriteStartObject("alpha_pattern"); w.WriteEndObject();
            w.WriteNull("auto_mapping");
            if (baseModelPath is null) w.WriteNull("base_model_name_or_path"); else w.WriteString("base_model_name_or_path", baseModelPath);
            w.WriteString("bias", "none");
            w.WriteBoolean("fan_in_fan_out", false);
            w.WriteBoolean("inference_mode", true);
            w.WriteBoolean("init_lora_weights", true);
            w.WriteNull("layer_replication");
            w.WriteNull("layers_pattern");
            w.WriteNull("layers_to_transform");
            w.WriteStartObject("loftq_config"); w.WriteEndObject();
            w.WritePropertyName("lora_alpha"); WriteNumber(w, config.Alpha, integerIfWhole: true);
            w.WritePropertyName("lora_dropout"); WriteNumber(w, config.Dropout, integerIfWhole: false);
            w.WriteNull("megatron_config");
            w.WriteString("megatron_core", "megatron.core");
            w.WriteNull("modules_to_save");
            w.WriteString("peft_type", "LORA");
            w.WriteNumber("r", config.Rank);
            w.WriteStartObject("rank_pattern"); w.WriteEndObject();
            w.WriteNull("revision");
            w.WriteStartArray("target_modules");
            foreach (var t in targets) w.WriteStringValue(t);
            w.WriteEndArray();
            w.WriteString("task_type", "CAUSAL_LM");
            w.WriteBoolean("use_dora", false);
            w.WriteBoolean("use_rslora", false);
            w.WriteEndObject();
        }
        return ms.ToArray();
    }

    /// <summary>
    /// A number as Python's json module prints it: lora_alpha is an int in PEFT (16, not 16.0) unless
    /// fractional; lora_dropout is a float (0.0, 0.05).
    /// </summary>
    private static void WriteNumber(Utf8JsonWriter w, double value, bool integerIfWhole)
    {
        if (value == Math.Floor(value) && Math.Abs(value) < 1e15)
            w.WriteRawValue(integerIfWhole
                ? ((long)value).ToString(CultureInfo.InvariantCulture)
                : ((long)value).ToString(CultureInfo.InvariantCulture) + ".0");
        else
            w.WriteNumberValue(value);
    }

    /// <summary>Writes bytes to a temporary file beside <paramref name="path"/>, flushes it to disk, then renames it over the target (TensorFileIO).</summary>
    private static void WriteAtomically(string path, byte[] bytes) => TensorFileIO.WriteAtomically(path, stream => stream.Write(bytes));
}
