// LLaMA models and their tokenizers in GGUF files, as llama.cpp writes and reads them.
//
// Where the conventions come from (llama.cpp: convert_hf_to_gguf.py's LlamaModel, gguf-py's constants.py
// and tensor_mapping.py, src/llama-model.cpp and src/llama-vocab.cpp):
//   - metadata: general.architecture = "llama", then llama.context_length, .embedding_length,
//     .block_count, .feed_forward_length, .attention.head_count, .attention.head_count_kv,
//     .rope.dimension_count, .rope.freq_base, .attention.layer_norm_rms_epsilon, .vocab_size
//     (.attention.key_length/.value_length when the head width is not C / NH; .rope.scaling.type and
//     .factor for linear RoPE scaling), general.file_type (llama_ftype of the bulk of the weights) and
//     general.name;
//   - tensors: token_embd, output_norm, output (absent when tied to the embedding), blk.N.attn_norm,
//     attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down (all ".weight");
//   - wq and wk are stored with their rows permuted for llama.cpp's interleaved RoPE (RopePermutation.cs):
//     applied when saving and undone when loading, so the model always sees Hugging Face's layout;
//   - tokenizer: tokenizer.ggml.model "llama" (SentencePiece: tokens, scores, token_type) or "gpt2"
//     (tokens, token_type, merges as "left right" strings, ranked by position), the special ids
//     (bos/eos/unknown/padding_token_id), add_bos_token/add_eos_token, add_space_prefix and
//     remove_extra_whitespaces. Token types are SentencePiece's (1 normal ... 6 byte), as in TokenType.
// Settings of LlamaTokenizer that llama.cpp has no key for (whitespace escaping, byte fallback, the
// unknown surface, Hugging Face's Metaspace variants) are written under tinyllama.tokenizer.* and only
// when they differ from what a llama.cpp file implies.
//
// A "gpt2" file from llama.cpp proper is byte-level BPE (GPT-2's byte-to-character map and a regex
// pre-tokenizer), which LlamaTokenizer does not implement; such a vocabulary (no byte pieces, no '▁')
// is refused instead of being tokenized wrongly. Llama 3.1's rope_freqs tensor is refused likewise.
using System.Globalization;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;

namespace TinyLlama.Formats;

/// <summary>Loads and saves LLaMA checkpoints (config, weights, tokenizer) as GGUF files.</summary>
public static class GgufModel
{
    /// <summary>The metadata keys this mapping reads and writes.</summary>
    public static class Keys
    {
#pragma warning disable CS1591 // the constants are the key strings themselves
        public const string Architecture = "general.architecture";
        public const string Name = "general.name";
        public const string FileType = "general.file_type";
        public const string ContextLength = "llama.context_length";
        public const string EmbeddingLength = "llama.embedding_length";
        public const string BlockCount = "llama.block_count";
        public const string FeedForwardLength = "llama.feed_forward_length";
        public const string HeadCount = "llama.attention.head_count";
        public const string HeadCountKv = "llama.attention.head_count_kv";
        public const string KeyLength = "llama.attention.key_length";
        public const string ValueLength = "llama.attention.value_length";
        public const string RopeDimensionCount = "llama.rope.dimension_count";
        public const string RopeFreqBase = "llama.rope.freq_base";
        public const string RopeScalingType = "llama.rope.scaling.type";
        public const string RopeScalingFactor = "llama.rope.scaling.factor";
        public const string RmsEpsilon = "llama.attention.layer_norm_rms_epsilon";
        public const string VocabSize = "llama.vocab_size";
        public const string TokenizerModel = "tokenizer.ggml.model";
        public const string Tokens = "tokenizer.ggml.tokens";
        public const string Scores = "tokenizer.ggml.scores";
        public const string TokenTypes = "tokenizer.ggml.token_type";
        public const string Merges = "tokenizer.ggml.merges";
        public const string BosId = "tokenizer.ggml.bos_token_id";
        public const string EosId = "tokenizer.ggml.eos_token_id";
        public const string UnknownId = "tokenizer.ggml.unknown_token_id";
        public const string PaddingId = "tokenizer.ggml.padding_token_id";
        public const string AddBos = "tokenizer.ggml.add_bos_token";
        public const string AddEos = "tokenizer.ggml.add_eos_token";
        public const string AddSpacePrefix = "tokenizer.ggml.add_space_prefix";
        public const string RemoveExtraWhitespaces = "tokenizer.ggml.remove_extra_whitespaces";
        public const string EscapeWhitespaces = "tinyllama.tokenizer.escape_whitespaces";
        public const string ByteFallback = "tinyllama.tokenizer.byte_fallback";
        public const string UnknownSurface = "tinyllama.tokenizer.unknown_surface";
        public const string PrefixOnlyIfAbsent = "tinyllama.tokenizer.prefix_only_if_absent";
        public const string SplitBeforeSpace = "tinyllama.tokenizer.split_before_space";
        public const string FuseUnknown = "tinyllama.tokenizer.fuse_unknown";
#pragma warning restore CS1591
    }

    // ---------------------------------------------------------------- names

    private static readonly (string Hf, string Gguf)[] LayerNames =
    [
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ];

    private static readonly (string Hf, string Gguf)[] GlobalNames =
    [
        (LlamaWeightNames.Embedding, "token_embd.weight"),
        (LlamaWeightNames.FinalNorm, "output_norm.weight"),
        (LlamaWeightNames.LmHead, "output.weight"),
    ];

    /// <summary>llama.cpp's name for a Hugging Face weight name (e.g. model.layers.3.mlp.up_proj.weight -> blk.3.ffn_up.weight), or null.</summary>
    public static string? GgufName(string hfName) => Rename(hfName, "model.layers.", "blk.", toGguf: true);

    /// <summary>The Hugging Face name for a llama.cpp tensor name (e.g. blk.3.ffn_up.weight -> model.layers.3.mlp.up_proj.weight), or null.</summary>
    public static string? HfName(string ggufName) => Rename(ggufName, "blk.", "model.layers.", toGguf: false);

    private static string? Rename(string name, string fromPrefix, string toPrefix, bool toGguf)
    {
        foreach (var (hf, gguf) in GlobalNames)
            if (name == (toGguf ? hf : gguf)) return toGguf ? gguf : hf;
        if (!name.StartsWith(fromPrefix, StringComparison.Ordinal)) return null;
        int dot = name.IndexOf('.', fromPrefix.Length);
        if (dot < 0) return null;
        string number = name[fromPrefix.Length..dot], suffix = name[(dot + 1)..];
        // Canonical decimal only, so that every name maps to exactly one other.
        if (!int.TryParse(number, NumberStyles.None, CultureInfo.InvariantCulture, out int layer) || layer.ToString(CultureInfo.InvariantCulture) != number) return null;
        foreach (var (hf, gguf) in LayerNames)
            if (suffix == (toGguf ? hf : gguf)) return $"{toPrefix}{layer}.{(toGguf ? gguf : hf)}";
        return null;
    }

    // ---------------------------------------------------------------- loading

    /// <summary>
    /// Loads a GGUF LLaMA model: the config from the llama.* metadata and the weights under Hugging Face
    /// names, checked against the config. Tensors view the mapped file, except wq and wk, which are
    /// un-permuted into rotate-half order (new host tensors). Block-quantized weights stay byte tensors.
    /// </summary>
    public static ModelCheckpoint Load(string path) => Load(GgufFile.Open(path));

    /// <summary>As <see cref="Load(string)"/>, from an opened file (whose metadata stays available).</summary>
    public static ModelCheckpoint Load(GgufFile file)
    {
        var config = ReadConfig(file);
        var weights = new Dictionary<string, Tensor>(file.Tensors.Count, StringComparer.Ordinal);
        foreach (var t in file.Tensors)
        {
            if (t.Name == "rope_freqs.weight")
                throw new InvalidDataException($"{file.Path}: tensor 'rope_freqs.weight' (Llama 3.1 RoPE frequency factors) is not supported");
            // Tensors with no LLaMA meaning are kept under their own names, as Checkpoint does for safetensors.
            weights[HfName(t.Name) ?? t.Name] = file.Get(t.Name);
        }
        Checkpoint.CheckWeights(config, weights, file.Path);
        for (int i = 0; i < config.NumHiddenLayers; i++)
        {
            weights[LlamaWeightNames.QProj(i)] = RopePermutation.Apply(weights[LlamaWeightNames.QProj(i)], config.NumAttentionHeads, toRotateHalf: true);
            weights[LlamaWeightNames.KProj(i)] = RopePermutation.Apply(weights[LlamaWeightNames.KProj(i)], config.NumKeyValueHeads, toRotateHalf: true);
        }
        return new ModelCheckpoint(config, weights);
    }

    /// <summary>The <see cref="LlamaConfig"/> a GGUF file's llama.* metadata describes.</summary>
    public static LlamaConfig ReadConfig(GgufFile file)
    {
        var m = new MetadataReader(file);
        string arch = m.String(Keys.Architecture) ?? throw m.Missing(Keys.Architecture);
        if (arch != "llama") throw new InvalidDataException($"{file.Path}: {Keys.Architecture} is {MessageText.Quote(arch)}; only 'llama' models are supported");
        int hidden = m.RequiredInt(Keys.EmbeddingLength), heads = m.RequiredInt(Keys.HeadCount);
        int vocab = m.Int(Keys.VocabSize)
            ?? (m.Array(Keys.Tokens)?.Count is int n and > 0 ? n : (int?)null)
            ?? (file.Contains("token_embd.weight") ? (int)file.GetInfo("token_embd.weight").Dimensions[^1] : throw m.Missing(Keys.VocabSize));
        var config = new LlamaConfig
        {
            VocabSize = vocab,
            HiddenSize = hidden,
            IntermediateSize = m.RequiredInt(Keys.FeedForwardLength),
            NumHiddenLayers = m.RequiredInt(Keys.BlockCount),
            NumAttentionHeads = heads,
            NumKeyValueHeads = m.Int(Keys.HeadCountKv) ?? heads,
            MaxPositionEmbeddings = m.RequiredInt(Keys.ContextLength),
            RmsNormEps = m.Float(Keys.RmsEpsilon) ?? throw m.Missing(Keys.RmsEpsilon),
            RopeTheta = m.Float(Keys.RopeFreqBase) ?? 10000.0, // llama.cpp's default when absent
            RopeScaling = ReadRopeScaling(m),
            TieWordEmbeddings = !file.Contains("output.weight"),
            BosTokenId = m.Int(Keys.BosId, allowNegative: true) ?? 1,
            EosTokenId = m.Int(Keys.EosId, allowNegative: true) ?? 2,
        };
        if (m.Int(Keys.KeyLength) is int keyLength) config = config with { HeadDim = keyLength };
        if (m.Int(Keys.ValueLength) is int valueLength && valueLength != config.HeadDim)
            throw new InvalidDataException($"{file.Path}: {Keys.ValueLength} {valueLength} differs from the key width {config.HeadDim}; this engine needs them equal");
        config.Validate(file.Path);
        if (m.Int(Keys.RopeDimensionCount) is int ropeDims && ropeDims != config.HeadDim)
            throw new InvalidDataException($"{file.Path}: {Keys.RopeDimensionCount} {ropeDims} differs from the head width {config.HeadDim}; partial RoPE is not supported");
        return config;
    }

    private static RopeScaling? ReadRopeScaling(MetadataReader m)
    {
        string? type = m.String(Keys.RopeScalingType);
        switch (type)
        {
            case null or "none":
                return null;
            case "linear":
                return new RopeScaling("linear", m.Float(Keys.RopeScalingFactor) ?? throw m.Missing(Keys.RopeScalingFactor));
            default:
                throw new InvalidDataException($"{m.Path}: {Keys.RopeScalingType} {MessageText.Quote(type)} is not supported (expected none or linear)");
        }
    }

    /// <summary>The tokenizer a GGUF file holds, or null when it has none (no tokenizer.ggml.model).</summary>
    public static LlamaTokenizer? ReadTokenizer(GgufFile file)
    {
        var m = new MetadataReader(file);
        string? model = m.String(Keys.TokenizerModel);
        if (model is null) return null;
        if (model is not ("llama" or "gpt2"))
            throw new InvalidDataException($"{file.Path}: {Keys.TokenizerModel} {MessageText.Quote(model)} is not supported (expected llama or gpt2)");
        string[] pieces = m.Items<string>(Keys.Tokens) ?? throw m.Missing(Keys.Tokens);
        int v = pieces.Length;
        int[] rawTypes = m.Items<int>(Keys.TokenTypes) ?? new int[v].Select(_ => (int)TokenType.Normal).ToArray();
        if (rawTypes.Length != v) throw new InvalidDataException($"{file.Path}: {Keys.TokenTypes} has {rawTypes.Length} entries for {v} tokens");
        var types = new TokenType[v];
        for (int i = 0; i < v; i++)
        {
            int t = rawTypes[i];
            // llama.cpp's LLAMA_TOKEN_TYPE_UNDEFINED (0) is an ordinary piece here.
            types[i] = t == 0 ? TokenType.Normal : t is >= 1 and <= 6 ? (TokenType)t
                : throw new InvalidDataException($"{file.Path}: {Keys.TokenTypes}[{i}] is {t} (expected 0 to 6)");
        }

        float[] scores = new float[v];
        List<(string, string)>? merges = null;
        if (model == "llama")
        {
            scores = m.Items<float>(Keys.Scores) ?? throw m.Missing(Keys.Scores);
            if (scores.Length != v) throw new InvalidDataException($"{file.Path}: {Keys.Scores} has {scores.Length} entries for {v} tokens");
        }
        else
        {
            bool llamaStyle = false;
            for (int i = 0; i < v && !llamaStyle; i++) llamaStyle = types[i] == TokenType.Byte || pieces[i].Contains(LlamaTokenizer.SpaceSymbol);
            if (!llamaStyle)
                throw new InvalidDataException($"{file.Path}: a byte-level BPE vocabulary (GPT-2 style: no byte pieces, no '▁'), which this engine's tokenizer does not implement");
            string[] lines = m.Items<string>(Keys.Merges) ?? throw m.Missing(Keys.Merges);
            merges = new List<(string, string)>(lines.Length);
            for (int i = 0; i < lines.Length; i++)
            {
                // llama.cpp splits at the first space after the first character.
                int space = lines[i].Length > 1 ? lines[i].IndexOf(' ', 1) : -1;
                if (space < 0) throw new InvalidDataException($"{file.Path}: {Keys.Merges}[{i}] {MessageText.Quote(lines[i])} is not of the form 'left right'");
                merges.Add((lines[i][..space], lines[i][(space + 1)..]));
            }
        }

        var defaults = new TokenizerOptions();
        var options = new TokenizerOptions
        {
            AddDummyPrefix = m.Bool(Keys.AddSpacePrefix) ?? defaults.AddDummyPrefix,
            RemoveExtraWhitespaces = m.Bool(Keys.RemoveExtraWhitespaces) ?? defaults.RemoveExtraWhitespaces,
            EscapeWhitespaces = m.Bool(Keys.EscapeWhitespaces) ?? defaults.EscapeWhitespaces,
            ByteFallback = m.Bool(Keys.ByteFallback) ?? defaults.ByteFallback,
            UnknownSurface = m.String(Keys.UnknownSurface) ?? defaults.UnknownSurface,
            BosId = m.Int(Keys.BosId, allowNegative: true) ?? -1,
            EosId = m.Int(Keys.EosId, allowNegative: true) ?? -1,
            PadId = m.Int(Keys.PaddingId, allowNegative: true) ?? -1,
            DummyPrefixOnlyIfAbsent = m.Bool(Keys.PrefixOnlyIfAbsent) ?? defaults.DummyPrefixOnlyIfAbsent,
            SplitBeforeSpaceSymbol = m.Bool(Keys.SplitBeforeSpace) ?? defaults.SplitBeforeSpaceSymbol,
            FuseUnknown = m.Bool(Keys.FuseUnknown) ?? defaults.FuseUnknown,
        };
        try
        {
            return LlamaTokenizer.Create(pieces, scores, types, options, merges, file.Path);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException(e.Message.ReplaceLineEndings(" "), e);
        }
    }

    /// <summary>The tokenizer inside a GGUF file; <see cref="InvalidDataException"/> when it holds none.</summary>
    public static LlamaTokenizer LoadTokenizer(string path) => LoadTokenizer(GgufFile.Open(path));

    /// <summary>As <see cref="LoadTokenizer(string)"/>, from an opened file (its metadata is not parsed again).</summary>
    public static LlamaTokenizer LoadTokenizer(GgufFile file) =>
        ReadTokenizer(file) ?? throw new InvalidDataException($"{file.Path}: the GGUF file holds no tokenizer ({Keys.TokenizerModel} is absent)");

    // ---------------------------------------------------------------- saving

    /// <summary>
    /// Saves a LLaMA model as a GGUF file llama.cpp can load: the config as llama.* metadata, the weights
    /// (Hugging Face names; f32, f16, bf16, or block DTypes for the 2-D matrices) under llama.cpp names with
    /// wq/wk rows permuted for interleaved RoPE, the tokenizer when given, and <paramref name="extraMetadata"/>
    /// after the rest (general.name there replaces the default, the file name). Weights the model does not
    /// use are not written. The file is replaced atomically.
    /// </summary>
    /// <exception cref="ArgumentException">Weights that do not fit the config, a tokenizer whose special ids
    /// disagree with it, an extra key that this method writes itself, or llama3 RoPE scaling (not supported).</exception>
    public static void Save(string path, LlamaConfig config, IReadOnlyDictionary<string, Tensor> weights,
        LlamaTokenizer? tokenizer = null, IReadOnlyDictionary<string, GgufValue>? extraMetadata = null)
    {
        try
        {
            config.Validate("config");
            Checkpoint.CheckWeights(config, weights, "weights");
        }
        catch (InvalidDataException e)
        {
            throw new ArgumentException($"GGUF save of {path}: {e.Message}", e);
        }
        if (config.RopeScaling is { Type: not "linear" } scaling)
            throw new ArgumentException($"GGUF save of {path}: rope_scaling '{scaling.Type}' is not supported (llama.cpp stores llama3 factors as a tensor)");

        var md = new List<KeyValuePair<string, GgufValue>>();
        void Add(string key, GgufValue value) => md.Add(new(key, value));
        void U32(string key, int value) => Add(key, GgufValue.UInt32((uint)value));
        Add(Keys.Architecture, GgufValue.String("llama"));
        Add(Keys.Name, extraMetadata?.GetValueOrDefault(Keys.Name) ?? GgufValue.String(Path.GetFileNameWithoutExtension(path)));
        U32(Keys.ContextLength, config.MaxPositionEmbeddings);
        U32(Keys.EmbeddingLength, config.HiddenSize);
        U32(Keys.BlockCount, config.NumHiddenLayers);
        U32(Keys.FeedForwardLength, config.IntermediateSize);
        U32(Keys.HeadCount, config.NumAttentionHeads);
        U32(Keys.HeadCountKv, config.NumKeyValueHeads);
        if (config.HeadDim * config.NumAttentionHeads != config.HiddenSize)
        {
            U32(Keys.KeyLength, config.HeadDim);
            U32(Keys.ValueLength, config.HeadDim);
        }
        U32(Keys.RopeDimensionCount, config.HeadDim);
        Add(Keys.RopeFreqBase, GgufValue.Float32((float)config.RopeTheta));
        Add(Keys.RmsEpsilon, GgufValue.Float32((float)config.RmsNormEps));
        if (config.RopeScaling is { } linear)
        {
            Add(Keys.RopeScalingType, GgufValue.String("linear"));
            Add(Keys.RopeScalingFactor, GgufValue.Float32((float)linear.Factor));
        }
        U32(Keys.VocabSize, config.VocabSize);
        U32(Keys.FileType, FileType(config, weights));
        if (tokenizer is null)
        {
            Add(Keys.BosId, Id(config.BosTokenId));
            Add(Keys.EosId, Id(config.EosTokenId));
        }
        else
        {
            if (tokenizer.BosId != config.BosTokenId || tokenizer.EosId != config.EosTokenId)
                throw new ArgumentException($"GGUF save of {path}: the tokenizer's BOS/EOS ids ({tokenizer.BosId}/{tokenizer.EosId}) differ from the config's ({config.BosTokenId}/{config.EosTokenId})");
            md.AddRange(TokenizerMetadata(tokenizer));
        }
        if (extraMetadata is not null)
        {
            var ours = md.Select(kv => kv.Key).ToHashSet(StringComparer.Ordinal);
            foreach (var (key, value) in extraMetadata)
            {
                if (key == Keys.Name) continue;
                if (ours.Contains(key)) throw new ArgumentException($"GGUF save of {path}: extra metadata '{key}' is written from the config or tokenizer; it cannot be given");
                Add(key, value);
            }
        }

        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var (name, _) in LlamaWeightNames.Expected(config))
        {
            var t = weights[name];
            string gguf = GgufName(name)!;
            if (gguf.EndsWith(".attn_q.weight", StringComparison.Ordinal)) t = RopePermutation.Apply(t, config.NumAttentionHeads, toRotateHalf: false);
            else if (gguf.EndsWith(".attn_k.weight", StringComparison.Ordinal)) t = RopePermutation.Apply(t, config.NumKeyValueHeads, toRotateHalf: false);
            tensors.Add(new(gguf, t));
        }
        GgufWriter.Save(path, md, tensors);
    }

    // llama.cpp's llama_ftype for the type most of the layer matrices have (by weight count): 0 all f32,
    // 1 f16, 2 Q4_0, 7 Q8_0, 15 Q4_K_M (Q4_K with some Q6_K), 18 Q6_K, 32 bf16.
    private static int FileType(LlamaConfig config, IReadOnlyDictionary<string, Tensor> weights)
    {
        var counts = new Dictionary<DType, long>();
        foreach (var (name, shape) in LlamaWeightNames.Expected(config))
            if (shape.Length == 2 && name.StartsWith("model.layers.", StringComparison.Ordinal))
                counts[weights[name].DType] = counts.GetValueOrDefault(weights[name].DType) + (long)shape[0] * shape[1];
        var bulk = counts.MaxBy(kv => kv.Value).Key;
        return bulk switch
        {
            DType.F16 => 1,
            DType.Q4 => 2,
            DType.Q8_0 => 7,
            DType.Q4_K => 15,
            DType.Q6_K => 18,
            DType.BF16 => 32,
            _ => 0,
        };
    }

    // Special ids are uint32 in GGUF; "none" (-1) is written as 0xFFFFFFFF, which llama.cpp reads back as -1.
    private static GgufValue Id(int id) => GgufValue.UInt32(unchecked((uint)id));

    /// <summary>
    /// The tokenizer.ggml.* entries that describe <paramref name="tokenizer"/> ("llama" when merges are
    /// ranked by score, "gpt2" when by a merge list), for a model file or a vocabulary-only file.
    /// </summary>
    /// <exception cref="ArgumentException">A merge whose left piece holds a space (the "left right" form cannot hold it).</exception>
    public static List<KeyValuePair<string, GgufValue>> TokenizerMetadata(LlamaTokenizer tokenizer)
    {
        var md = new List<KeyValuePair<string, GgufValue>>();
        void Add(string key, GgufValue value) => md.Add(new(key, value));
        int v = tokenizer.VocabSize;
        var pieces = new string[v];
        var types = new int[v];
        for (int i = 0; i < v; i++)
        {
            pieces[i] = tokenizer.IdToPiece(i);
            types[i] = (int)tokenizer.GetTokenType(i);
        }
        bool merges = tokenizer.UsesMergeRanks;
        Add(Keys.TokenizerModel, GgufValue.String(merges ? "gpt2" : "llama"));
        Add(Keys.Tokens, GgufValue.Array(pieces));
        if (!merges)
        {
            var scores = new float[v];
            for (int i = 0; i < v; i++) scores[i] = tokenizer.GetScore(i);
            Add(Keys.Scores, GgufValue.Array(scores));
        }
        Add(Keys.TokenTypes, GgufValue.Array(types));
        if (merges)
        {
            var list = tokenizer.MergesInRankOrder();
            var lines = new string[list.Count];
            for (int i = 0; i < lines.Length; i++)
            {
                var (left, right) = list[i];
                if (left.IndexOf(' ', 1) >= 0)
                    throw new ArgumentException($"GGUF tokenizer: merge {i} has a left piece '{left}' with a space inside, which the 'left right' form cannot hold");
                lines[i] = left + " " + right;
            }
            Add(Keys.Merges, GgufValue.Array(lines));
        }
        Add(Keys.BosId, Id(tokenizer.BosId));
        Add(Keys.EosId, Id(tokenizer.EosId));
        Add(Keys.UnknownId, Id(tokenizer.UnkId));
        if (tokenizer.PadId >= 0) Add(Keys.PaddingId, Id(tokenizer.PadId));
        Add(Keys.AddBos, GgufValue.Bool(tokenizer.BosId >= 0));
        Add(Keys.AddEos, GgufValue.Bool(false));
        var o = tokenizer.Options;
        var d = new TokenizerOptions();
        Add(Keys.AddSpacePrefix, GgufValue.Bool(o.AddDummyPrefix));
        Add(Keys.RemoveExtraWhitespaces, GgufValue.Bool(o.RemoveExtraWhitespaces));
        if (o.EscapeWhitespaces != d.EscapeWhitespaces) Add(Keys.EscapeWhitespaces, GgufValue.Bool(o.EscapeWhitespaces));
        if (o.ByteFallback != d.ByteFallback) Add(Keys.ByteFallback, GgufValue.Bool(o.ByteFallback));
        if (o.UnknownSurface != d.UnknownSurface) Add(Keys.UnknownSurface, GgufValue.String(o.UnknownSurface));
        if (o.DummyPrefixOnlyIfAbsent != d.DummyPrefixOnlyIfAbsent) Add(Keys.PrefixOnlyIfAbsent, GgufValue.Bool(o.DummyPrefixOnlyIfAbsent));
        if (o.SplitBeforeSpaceSymbol != d.SplitBeforeSpaceSymbol) Add(Keys.SplitBeforeSpace, GgufValue.Bool(o.SplitBeforeSpaceSymbol));
        if (o.FuseUnknown != d.FuseUnknown) Add(Keys.FuseUnknown, GgufValue.Bool(o.FuseUnknown));
        return md;
    }

    /// <summary>Typed metadata access with one-line errors naming the file and key; absent keys read as null.</summary>
    private readonly struct MetadataReader(GgufFile file)
    {
        public string Path => file.Path;

        public InvalidDataException Missing(string key) => new($"{file.Path}: required metadata '{key}' is missing");

        private InvalidDataException Wrong(string key, string expected, GgufValue v) =>
            new($"{file.Path}: metadata '{key}' must be {expected}, got {v.Type}{(v.Type == GgufValueType.Array ? "" : " " + MessageText.Escape(v.ToString()))}");

        private GgufValue? Get(string key) => file.Metadata.TryGetValue(key, out var v) ? v : null;

        public string? String(string key) => Get(key) is not { } v ? null : v.Value as string ?? throw Wrong(key, "a string", v);

        public bool? Bool(string key) => Get(key) is not { } v ? null : v.Value as bool? ?? throw Wrong(key, "a bool", v);

        public double? Float(string key)
        {
            if (Get(key) is not { } v) return null;
            double d = v.AsFloat() ?? v.AsInteger() ?? throw Wrong(key, "a number", v);
            return double.IsFinite(d) ? d : throw Wrong(key, "a finite number", v);
        }

        // Ids are written as uint32; a negative id (none) may come back as 0xFFFFFFFF, or as an int32.
        public int? Int(string key, bool allowNegative = false)
        {
            if (Get(key) is not { } v) return null;
            long n = v.AsInteger() ?? throw Wrong(key, "an integer", v);
            if (allowNegative && v.Value is uint u && u > int.MaxValue) n = unchecked((int)u);
            if (n > int.MaxValue || n < (allowNegative ? -1 : 0)) throw Wrong(key, "an integer in range", v);
            return (int)n;
        }

        public int RequiredInt(string key) => Int(key) ?? throw Missing(key);

        public GgufArray? Array(string key) => Get(key) is not { } v ? null : v.AsArray() ?? throw Wrong(key, "an array", v);

        public T[]? Items<T>(string key)
        {
            if (Array(key) is not { } a) return null;
            return a.Items as T[] ?? throw Wrong(key, $"an array of {GgufArray.TypeOfElement(typeof(T))}", file.Metadata[key]);
        }
    }
}
