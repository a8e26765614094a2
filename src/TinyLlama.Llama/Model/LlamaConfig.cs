// The LLaMA hyper-parameters as one immutable record, read from and written to Hugging Face's
// config.json, with the presets this project uses and the RoPE inverse frequencies they imply.
//
// Field names and defaults follow Hugging Face transformers' LlamaConfig
// (transformers/models/llama/configuration_llama.py): a missing optional field takes the value HF would
// give it, so a config.json that HF loads means the same model here. The architecture itself is
// Touvron et al., "LLaMA" (2023) and "Llama 2" (2023): pre-norm RMSNorm blocks, SwiGLU MLP, rotary
// position embeddings (Su et al., "RoFormer", 2021), grouped-query attention (Ainslie et al., 2023).
// RoPE frequency scaling: "linear" is position interpolation (Chen et al., 2023, arXiv:2306.15595);
// "llama3" is the frequency-dependent rule Meta published with Llama 3.1 (the reference code in
// meta-llama/llama-models, `apply_scaling`, and HF's `_compute_llama3_parameters`).
using System.Globalization;
using System.Text;
using System.Text.Json;
using TinyLlama.Formats;

namespace TinyLlama.Model;

/// <summary>
/// RoPE frequency scaling, as in config.json's <c>rope_scaling</c> object.
/// </summary>
/// <param name="Type">"linear" (divide every frequency by <paramref name="Factor"/>) or "llama3" (Llama 3.1's frequency-dependent rule).</param>
/// <param name="Factor">How many times longer the target context is than the trained one.</param>
/// <param name="LowFreqFactor">llama3 only: wavelengths longer than original/LowFreqFactor are fully scaled.</param>
/// <param name="HighFreqFactor">llama3 only: wavelengths shorter than original/HighFreqFactor are left alone.</param>
/// <param name="OriginalMaxPositionEmbeddings">llama3 only: the context length the model was pre-trained with.</param>
public sealed record RopeScaling(
    string Type,
    double Factor,
    double LowFreqFactor = 1.0,
    double HighFreqFactor = 4.0,
    int OriginalMaxPositionEmbeddings = 8192);

/// <summary>
/// The hyper-parameters of a LLaMA model. Immutable: derive variants with <c>with { ... }</c>.
/// Read one with <see cref="FromJson"/>, take a <see cref="Preset"/>, or set the required sizes directly.
/// </summary>
public sealed record LlamaConfig
{
    private readonly int? numKeyValueHeads;
    private readonly int? headDim;
    private readonly IReadOnlyList<int> eosTokenIds = [2];

    /// <summary>Number of token ids (rows of the embedding and of the LM head). V in the glossary.</summary>
    public required int VocabSize { get; init; }

    /// <summary>Width of the residual stream. C in the glossary (llama2.c calls it dim).</summary>
    public required int HiddenSize { get; init; }

    /// <summary>Width of the SwiGLU MLP's hidden layer (llama2.c's hidden_dim).</summary>
    public required int IntermediateSize { get; init; }

    /// <summary>Number of transformer blocks.</summary>
    public required int NumHiddenLayers { get; init; }

    /// <summary>Number of query heads. NH in the glossary.</summary>
    public required int NumAttentionHeads { get; init; }

    /// <summary>
    /// Number of key/value heads (grouped-query attention: each serves NumAttentionHeads / NumKeyValueHeads
    /// query heads). Defaults to <see cref="NumAttentionHeads"/> (plain multi-head attention), as in HF.
    /// </summary>
    public int NumKeyValueHeads { get => numKeyValueHeads ?? NumAttentionHeads; init => numKeyValueHeads = value; }

    /// <summary>Width of one head. HS in the glossary. Defaults to HiddenSize / NumAttentionHeads, as in HF.</summary>
    public int HeadDim { get => headDim ?? (NumAttentionHeads > 0 ? HiddenSize / NumAttentionHeads : 0); init => headDim = value; }

    /// <summary>
    /// Longest sequence the model was trained for: no position beyond it is computed. HF default 2048. Nothing is
    /// allocated by it: the RoPE tables grow with the positions used and KV caches are sized by their callers.
    /// </summary>
    public int MaxPositionEmbeddings { get; init; } = 2048;

    /// <summary>The epsilon inside RMSNorm's square root. HF's default is 1e-6; LLaMA 2 and llama2.c use 1e-5.</summary>
    public double RmsNormEps { get; init; } = 1e-6;

    /// <summary>RoPE base θ: frequencies are θ^(-2i/HS). 10000 for LLaMA 1/2, 500000 for LLaMA 3.</summary>
    public double RopeTheta { get; init; } = 10000.0;

    /// <summary>Optional RoPE frequency scaling for longer contexts; null for none.</summary>
    public RopeScaling? RopeScaling { get; init; }

    /// <summary>True when the LM head reuses the token embedding matrix (no separate lm_head.weight).</summary>
    public bool TieWordEmbeddings { get; init; }

    /// <summary>Beginning-of-sequence token id (1 in the LLaMA SentencePiece vocabulary).</summary>
    public int BosTokenId { get; init; } = 1;

    /// <summary>The end-of-sequence token id; the first of <see cref="EosTokenIds"/> when the config lists several.</summary>
    public int EosTokenId { get => eosTokenIds[0]; init => eosTokenIds = [value]; }

    /// <summary>
    /// Every id that ends generation. HF allows eos_token_id to be an int or a list (Llama 3 lists several);
    /// never empty. Setting it also sets <see cref="EosTokenId"/> to the first entry.
    /// </summary>
    public IReadOnlyList<int> EosTokenIds
    {
        get => eosTokenIds;
        init
        {
            if (value is null || value.Count == 0) throw new ArgumentException("EosTokenIds must hold at least one id");
            eosTokenIds = value.ToArray();
        }
    }

    /// <summary>Width of the key and value projections: NumKeyValueHeads * HeadDim.</summary>
    public int KvDim => NumKeyValueHeads * HeadDim;

    // ---------------- presets ----------------

    /// <summary>TinyLlama-1.1B (Zhang et al., 2024): the Llama 2 architecture at 22 layers, GQA with 4 KV heads.</summary>
    public static LlamaConfig TinyLlama1_1B { get; } = new()
    {
        VocabSize = 32000, HiddenSize = 2048, IntermediateSize = 5632, NumHiddenLayers = 22,
        NumAttentionHeads = 32, NumKeyValueHeads = 4, MaxPositionEmbeddings = 2048,
        RmsNormEps = 1e-5, RopeTheta = 10000.0, TieWordEmbeddings = false,
    };

    /// <summary>llama2.c's stories15M (TinyStories): dim 288, 6 layers, 6 heads, shared classifier.</summary>
    public static LlamaConfig Stories15M { get; } = Llama2CStyle(vocab: 32000, dim: 288, ffn: 768, layers: 6, heads: 6, kvHeads: 6, seq: 256);

    /// <summary>llama2.c's stories110M (TinyStories): dim 768, 12 layers, 12 heads, shared classifier.</summary>
    public static LlamaConfig Stories110M { get; } = Llama2CStyle(vocab: 32000, dim: 768, ffn: 2048, layers: 12, heads: 12, kvHeads: 12, seq: 1024);

    /// <summary>llama2.c's stories260K (TinyStories, 512-token vocabulary): dim 64, 5 layers, 8 heads, 4 KV heads.</summary>
    public static LlamaConfig Stories260K { get; } = Llama2CStyle(vocab: 512, dim: 64, ffn: 172, layers: 5, heads: 8, kvHeads: 4, seq: 512);

    /// <summary>The preset names <see cref="Preset"/> accepts.</summary>
    public static IReadOnlyList<string> PresetNames { get; } = ["tinyllama-1.1b", "stories15M", "stories110M", "stories260K"];

    /// <summary>A preset by name (case-insensitive): tinyllama-1.1b, stories15M, stories110M, stories260K.</summary>
    public static LlamaConfig Preset(string name) => name.ToLowerInvariant() switch
    {
        "tinyllama-1.1b" => TinyLlama1_1B,
        "stories15m" => Stories15M,
        "stories110m" => Stories110M,
        "stories260k" => Stories260K,
        _ => throw new ArgumentException($"unknown preset '{name}': expected one of {string.Join(", ", PresetNames)}"),
    };

    // llama2.c's TinyStories models: RMSNorm eps 1e-5 and θ = 10000 are hard-coded in its run.c and model.py,
    // and its export shares the classifier with the embedding.
    private static LlamaConfig Llama2CStyle(int vocab, int dim, int ffn, int layers, int heads, int kvHeads, int seq) => new()
    {
        VocabSize = vocab, HiddenSize = dim, IntermediateSize = ffn, NumHiddenLayers = layers,
        NumAttentionHeads = heads, NumKeyValueHeads = kvHeads, MaxPositionEmbeddings = seq,
        RmsNormEps = 1e-5, RopeTheta = 10000.0, TieWordEmbeddings = true,
    };

    // ---------------- derived quantities ----------------

    /// <summary>
    /// Number of parameters: embedding V*C; per layer the q, k, v, o projections, gate, up and down
    /// projections and two RMSNorm weights; the final norm; and the LM head V*C unless tied.
    /// </summary>
    public long ParameterCount()
    {
        long c = HiddenSize, v = VocabSize, f = IntermediateSize;
        long qDim = (long)NumAttentionHeads * HeadDim, kvDim = (long)NumKeyValueHeads * HeadDim;
        long attention = c * qDim + 2 * c * kvDim + qDim * c;   // q, k, v, o
        long mlp = 3 * c * f;                                   // gate, up, down
        long perLayer = attention + mlp + 2 * c;                // + input and post-attention norms
        return v * c + NumHiddenLayers * perLayer + c + (TieWordEmbeddings ? 0 : v * c);
    }

    /// <summary>
    /// RoPE inverse frequencies, HeadDim/2 of them, in f64: inv_freq[i] = θ^(-2i/HS), then
    /// <see cref="RopeScaling"/> applied. Position p rotates pair i by the angle p * inv_freq[i].
    /// </summary>
    public double[] RopeInverseFrequencies()
    {
        int d = HeadDim;
        var inv = new double[d / 2];
        for (int i = 0; i < inv.Length; i++) inv[i] = Math.Pow(RopeTheta, -2.0 * i / d);
        if (RopeScaling is not { } s) return inv;
        switch (s.Type)
        {
            case "linear":
                // Position interpolation: positions are squeezed by the factor, i.e. every frequency divided by it.
                for (int i = 0; i < inv.Length; i++) inv[i] /= s.Factor;
                break;
            case "llama3":
                // Llama 3.1: wavelengths (2π / freq) shorter than original/high_freq_factor are local patterns the
                // model already handles, so they stay; wavelengths longer than original/low_freq_factor exceed
                // the trained context, so they are interpolated fully (divided by factor); in between, blend
                // linearly in original/wavelength so the two regimes join without a jump.
                double lowFreqWavelen = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor;
                double highFreqWavelen = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
                for (int i = 0; i < inv.Length; i++)
                {
                    double wavelen = 2 * Math.PI / inv[i];
                    if (wavelen < highFreqWavelen) continue;
                    if (wavelen > lowFreqWavelen) { inv[i] /= s.Factor; continue; }
                    double smooth = (s.OriginalMaxPositionEmbeddings / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    inv[i] = (1 - smooth) * inv[i] / s.Factor + smooth * inv[i];
                }
                break;
            default:
                throw new InvalidOperationException($"rope_scaling type '{s.Type}' is not supported (expected linear or llama3)");
        }
        return inv;
    }

    // ---------------- validation ----------------

    /// <summary>Throws <see cref="InvalidDataException"/> when the sizes are not a buildable model.</summary>
    public void Validate() => Validate("config");

    internal void Validate(string source)
    {
        void Positive(string field, long value)
        {
            if (value <= 0) throw new InvalidDataException($"{source}: {field} must be positive, got {value}");
        }
        Positive("vocab_size", VocabSize);
        Positive("hidden_size", HiddenSize);
        Positive("intermediate_size", IntermediateSize);
        Positive("num_hidden_layers", NumHiddenLayers);
        Positive("num_attention_heads", NumAttentionHeads);
        Positive("num_key_value_heads", NumKeyValueHeads);
        if (headDim is null && HiddenSize % NumAttentionHeads != 0)
            throw new InvalidDataException($"{source}: num_attention_heads ({NumAttentionHeads}) does not divide hidden_size ({HiddenSize}) and head_dim is not given");
        Positive("head_dim", HeadDim);
        if (HeadDim % 2 != 0)
            throw new InvalidDataException($"{source}: head_dim ({HeadDim}) must be even, since RoPE rotates pairs of dimensions");
        if (NumAttentionHeads % NumKeyValueHeads != 0)
            throw new InvalidDataException($"{source}: num_key_value_heads ({NumKeyValueHeads}) does not divide num_attention_heads ({NumAttentionHeads})");
        // Each weight is one tensor of at most int.MaxValue elements: widths whose products overflow describe
        // no model this engine can hold (and would wrap around in the arithmetic that sizes the tensors).
        void Fits(string what, long elements)
        {
            if (elements > int.MaxValue)
                throw new InvalidDataException($"{source}: {what} = {elements} is more than the {int.MaxValue} elements a tensor may hold");
        }
        long qDim = (long)NumAttentionHeads * HeadDim; // NumKeyValueHeads divides NumAttentionHeads: k and v are no wider
        Fits("num_attention_heads x head_dim", qDim);
        Fits("num_attention_heads x head_dim x hidden_size (q_proj)", qDim * HiddenSize);
        Fits("vocab_size x hidden_size (embed_tokens)", (long)VocabSize * HiddenSize);
        Fits("intermediate_size x hidden_size (gate_proj)", (long)IntermediateSize * HiddenSize);
        Positive("max_position_embeddings", MaxPositionEmbeddings);
        if (!(RmsNormEps > 0) || double.IsInfinity(RmsNormEps))
            throw new InvalidDataException($"{source}: rms_norm_eps must be a positive number, got {RmsNormEps.ToString(CultureInfo.InvariantCulture)}");
        if (!(RopeTheta > 0) || double.IsInfinity(RopeTheta))
            throw new InvalidDataException($"{source}: rope_theta must be a positive number, got {RopeTheta.ToString(CultureInfo.InvariantCulture)}");
        if (RopeScaling is { } s)
        {
            if (s.Type is not ("linear" or "llama3"))
                throw new InvalidDataException($"{source}: rope_scaling type {MessageText.Quote(s.Type)} is not supported (expected linear or llama3)");
            if (!(s.Factor > 0) || double.IsInfinity(s.Factor))
                throw new InvalidDataException($"{source}: rope_scaling.factor must be positive, got {s.Factor.ToString(CultureInfo.InvariantCulture)}");
            if (s.Type == "llama3")
            {
                if (!(s.LowFreqFactor > 0) || !(s.HighFreqFactor > s.LowFreqFactor))
                    throw new InvalidDataException($"{source}: rope_scaling needs 0 < low_freq_factor < high_freq_factor, got {s.LowFreqFactor.ToString(CultureInfo.InvariantCulture)} and {s.HighFreqFactor.ToString(CultureInfo.InvariantCulture)}");
                Positive("rope_scaling.original_max_position_embeddings", s.OriginalMaxPositionEmbeddings);
            }
        }
    }

    // ---------------- config.json ----------------

    /// <summary>Reads a Hugging Face config.json; errors are one-line <see cref="InvalidDataException"/>s naming the file and field.</summary>
    public static LlamaConfig FromJson(string path) => FromJsonText(TinyLlama.Formats.JsonText.ReadFile(path), path);

    /// <summary>Parses config.json text; <paramref name="sourceName"/> names it in error messages.</summary>
    public static LlamaConfig FromJsonText(string json, string sourceName)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{sourceName}: not valid JSON ({JsonText.Describe(e)})");
        }
        using (doc)
        {
            JsonText.CheckEscapes(Encoding.UTF8.GetBytes(json), sourceName);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{sourceName}: expected a JSON object, got {root.ValueKind}");
            var r = new FieldReader(root, sourceName);
            CheckArchitecture(r, sourceName);

            // Features the model does not implement: refuse rather than load a model that would compute something else.
            string? act = r.OptionalString("hidden_act");
            if (act is not null && act != "silu")
                throw new InvalidDataException($"{sourceName}: hidden_act {MessageText.Quote(act)} is not supported (LLaMA uses silu)");
            if (r.OptionalBool("attention_bias") == true)
                throw new InvalidDataException($"{sourceName}: attention_bias = true is not supported (LLaMA projections have no bias)");
            if (r.OptionalBool("mlp_bias") == true)
                throw new InvalidDataException($"{sourceName}: mlp_bias = true is not supported (LLaMA projections have no bias)");

            int heads = r.RequiredInt("num_attention_heads");
            var config = new LlamaConfig
            {
                VocabSize = r.RequiredInt("vocab_size"),
                HiddenSize = r.RequiredInt("hidden_size"),
                IntermediateSize = r.RequiredInt("intermediate_size"),
                NumHiddenLayers = r.RequiredInt("num_hidden_layers"),
                NumAttentionHeads = heads,
                NumKeyValueHeads = r.OptionalInt("num_key_value_heads") ?? heads,
                MaxPositionEmbeddings = r.OptionalInt("max_position_embeddings") ?? 2048,
                RmsNormEps = r.OptionalDouble("rms_norm_eps") ?? 1e-6,
                RopeTheta = r.OptionalDouble("rope_theta") ?? 10000.0,
                RopeScaling = ReadRopeScaling(root, sourceName),
                TieWordEmbeddings = r.OptionalBool("tie_word_embeddings") ?? false,
                BosTokenId = r.OptionalInt("bos_token_id") ?? 1,
                EosTokenIds = r.IntOrIntList("eos_token_id") ?? [2],
            };
            int? hd = r.OptionalInt("head_dim");
            if (hd is int h) config = config with { HeadDim = h };
            config.Validate(sourceName);
            return config;
        }
    }

    /// <summary>Writes <see cref="ToJson"/> to a file.</summary>
    public void Save(string path) => File.WriteAllText(path, ToJson());

    /// <summary>A Hugging Face-compatible config.json (LlamaForCausalLM, float32).</summary>
    public string ToJson()
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartArray("architectures");
            w.WriteStringValue("LlamaForCausalLM");
            w.WriteEndArray();
            w.WriteString("model_type", "llama");
            w.WriteNumber("vocab_size", VocabSize);
            w.WriteNumber("hidden_size", HiddenSize);
            w.WriteNumber("intermediate_size", IntermediateSize);
            w.WriteNumber("num_hidden_layers", NumHiddenLayers);
            w.WriteNumber("num_attention_heads", NumAttentionHeads);
            w.WriteNumber("num_key_value_heads", NumKeyValueHeads);
            w.WriteNumber("head_dim", HeadDim);
            w.WriteNumber("max_position_embeddings", MaxPositionEmbeddings);
            w.WriteNumber("rms_norm_eps", RmsNormEps);
            w.WriteNumber("rope_theta", RopeTheta);
            if (RopeScaling is { } s)
            {
                w.WriteStartObject("rope_scaling");
                // HF reads "rope_type" (newer) and "type" (older); writing both keeps every version happy.
                w.WriteString("rope_type", s.Type);
                w.WriteString("type", s.Type);
                w.WriteNumber("factor", s.Factor);
                if (s.Type == "llama3")
                {
                    w.WriteNumber("low_freq_factor", s.LowFreqFactor);
                    w.WriteNumber("high_freq_factor", s.HighFreqFactor);
                    w.WriteNumber("original_max_position_embeddings", s.OriginalMaxPositionEmbeddings);
                }
                w.WriteEndObject();
            }
            else
            {
                w.WriteNull("rope_scaling");
            }
            w.WriteBoolean("tie_word_embeddings", TieWordEmbeddings);
            w.WriteNumber("bos_token_id", BosTokenId);
            if (EosTokenIds.Count == 1)
            {
                w.WriteNumber("eos_token_id", EosTokenId);
            }
            else
            {
                w.WriteStartArray("eos_token_id");
                foreach (int id in EosTokenIds) w.WriteNumberValue(id);
                w.WriteEndArray();
            }
            w.WriteString("hidden_act", "silu");
            w.WriteBoolean("attention_bias", false);
            w.WriteBoolean("mlp_bias", false);
            w.WriteString("torch_dtype", "float32");
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    /// <summary>Value equality over the effective fields (defaults resolved, eos lists compared element-wise).</summary>
    public bool Equals(LlamaConfig? other) =>
        other is not null
        && VocabSize == other.VocabSize && HiddenSize == other.HiddenSize && IntermediateSize == other.IntermediateSize
        && NumHiddenLayers == other.NumHiddenLayers && NumAttentionHeads == other.NumAttentionHeads
        && NumKeyValueHeads == other.NumKeyValueHeads && HeadDim == other.HeadDim
        && MaxPositionEmbeddings == other.MaxPositionEmbeddings && RmsNormEps.Equals(other.RmsNormEps)
        && RopeTheta.Equals(other.RopeTheta) && Equals(RopeScaling, other.RopeScaling)
        && TieWordEmbeddings == other.TieWordEmbeddings && BosTokenId == other.BosTokenId
        && EosTokenIds.SequenceEqual(other.EosTokenIds);

    /// <summary>Hash of the sizes (consistent with <see cref="Equals(LlamaConfig)"/>).</summary>
    public override int GetHashCode() => HashCode.Combine(VocabSize, HiddenSize, IntermediateSize, NumHiddenLayers, NumAttentionHeads, NumKeyValueHeads, HeadDim, MaxPositionEmbeddings);

    // ---------------- JSON helpers ----------------

    private static void CheckArchitecture(FieldReader r, string source)
    {
        string? modelType = r.OptionalString("model_type");
        var architectures = r.OptionalStringList("architectures");
        bool llama = modelType == "llama" || (architectures?.Contains("LlamaForCausalLM") ?? false);
        if (llama) return;
        string found = modelType is not null ? $"model_type {MessageText.Quote(modelType)}"
            : architectures is not null ? $"architectures [{MessageText.Escape(string.Join(", ", architectures))}]"
            : "neither model_type nor architectures";
        throw new InvalidDataException($"{source}: not a LLaMA config ({found}; expected model_type 'llama' or architectures containing LlamaForCausalLM)");
    }

    private static RopeScaling? ReadRopeScaling(JsonElement root, string source)
    {
        if (!root.TryGetProperty("rope_scaling", out var e) || e.ValueKind == JsonValueKind.Null) return null;
        if (e.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{source}: field 'rope_scaling' must be an object or null, got {Kind(e)}");
        var r = new FieldReader(e, source, "rope_scaling.");
        string? type = r.OptionalString("rope_type") ?? r.OptionalString("type");
        if (type is null)
            throw new InvalidDataException($"{source}: required field 'rope_scaling.rope_type' is missing");
        switch (type)
        {
            case "default":
                return null; // HF's name for "no scaling"
            case "linear":
                return new RopeScaling("linear", r.RequiredDouble("factor"));
            case "llama3":
                return new RopeScaling("llama3", r.RequiredDouble("factor"), r.RequiredDouble("low_freq_factor"),
                    r.RequiredDouble("high_freq_factor"), r.RequiredInt("original_max_position_embeddings"));
            default:
                throw new InvalidDataException($"{source}: rope_scaling type {MessageText.Quote(type)} is not supported (expected linear or llama3)");
        }
    }

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Number => "a number",
        JsonValueKind.String => "a string",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        JsonValueKind.Null => "null",
        _ => e.ValueKind.ToString(),
    };

    /// <summary>Typed field access over one JSON object, with errors naming the source and field. Null counts as absent.</summary>
    private readonly struct FieldReader(JsonElement obj, string source, string prefix = "")
    {
        private bool TryGet(string name, out JsonElement e) =>
            obj.TryGetProperty(name, out e) && e.ValueKind != JsonValueKind.Null;

        private InvalidDataException Missing(string name) => new($"{source}: required field '{prefix}{name}' is missing");

        private InvalidDataException Wrong(string name, string expected, JsonElement e) =>
            new($"{source}: field '{prefix}{name}' must be {expected}, got {Kind(e)}{(e.ValueKind is JsonValueKind.Number or JsonValueKind.String ? " " + MessageText.Escape(e.GetRawText()) : "")}");

        public int RequiredInt(string name) => OptionalInt(name) ?? throw Missing(name);

        public double RequiredDouble(string name) => OptionalDouble(name) ?? throw Missing(name);

        public int? OptionalInt(string name)
        {
            if (!TryGet(name, out var e)) return null;
            if (e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int v)) return v;
            throw Wrong(name, "an integer", e);
        }

        public double? OptionalDouble(string name)
        {
            if (!TryGet(name, out var e)) return null;
            if (e.ValueKind == JsonValueKind.Number && e.TryGetDouble(out double v) && double.IsFinite(v)) return v;
            throw Wrong(name, "a number", e);
        }

        public bool? OptionalBool(string name)
        {
            if (!TryGet(name, out var e)) return null;
            if (e.ValueKind is JsonValueKind.True or JsonValueKind.False) return e.GetBoolean();
            throw Wrong(name, "true or false", e);
        }

        public string? OptionalString(string name)
        {
            if (!TryGet(name, out var e)) return null;
            if (e.ValueKind == JsonValueKind.String) return e.GetString();
            throw Wrong(name, "a string", e);
        }

        public List<string>? OptionalStringList(string name)
        {
            if (!TryGet(name, out var e)) return null;
            if (e.ValueKind != JsonValueKind.Array) throw Wrong(name, "a list of strings", e);
            var list = new List<string>();
            foreach (var item in e.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.String) throw Wrong(name, "a list of strings", item);
                list.Add(item.GetString()!);
            }
            return list;
        }

        public int[]? IntOrIntList(string name)
        {
            if (!TryGet(name, out var e)) return null;
            if (e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int single)) return [single];
            if (e.ValueKind != JsonValueKind.Array) throw Wrong(name, "an integer or a list of integers", e);
            var list = new List<int>();
            foreach (var item in e.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt32(out int v)) throw Wrong(name, "an integer or a list of integers", item);
                list.Add(v);
            }
            if (list.Count == 0) throw new InvalidDataException($"{source}: field '{prefix}{name}' is an empty list");
            return list.ToArray();
        }
    }
}
