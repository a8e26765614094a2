// LLaMA (Touvron et al., 2023; Llama 2 adds grouped-query attention), laid out as Hugging Face's
// LlamaForCausalLM so that parameter names match checkpoints exactly:
//
//   model.embed_tokens -> N x LlamaDecoderLayer -> model.norm -> lm_head
//   LlamaDecoderLayer:  x = x + self_attn(input_layernorm(x))
//                       x = x + mlp(post_attention_layernorm(x))
//   self_attn: q/k/v projections, RoPE (rotate-half layout) on q and k, causal grouped-query attention
//              (NKV key/value heads shared by NH / NKV query heads each), o projection
//   mlp:       down_proj(silu(gate_proj(x)) * up_proj(x))                         (SwiGLU)
//
// Sizes: B batch, T new tokens, S = cached + new tokens, C hidden, NH heads, NKV kv heads, HS head dim,
// V vocabulary. The same Forward serves training (no cache, full sequence, autograd) and inference
// (a KvCache: prefill the prompt, then decode one token at a time).
using TinyLlama.Autograd;
using TinyLlama.Backends;
using TinyLlama.Formats;
using TinyLlama.NN;
using TinyLlama.Tensors;

namespace TinyLlama.Model;

/// <summary>RMSNorm with a learned per-feature scale (initialised to 1).</summary>
public sealed class RmsNorm : Module
{
    public RmsNorm(int dim, double eps, DType dtype = DType.F32, Device? device = null)
    {
        Eps = eps;
        Weight = RegisterParameter("weight", Tensor.Ones([dim], dtype, device));
    }

    public double Eps { get; }

    /// <summary>[C].</summary>
    public Tensor Weight { get; private set; }

    /// <summary>x [..., C] -> x / rms(x) * weight.</summary>
    public Tensor Forward(Tensor x) => Functional.RmsNorm(x, Weight, Eps);

    protected override void OnParameterReplaced(string name, Tensor value) => Weight = value;
}

/// <summary>Causal self-attention with grouped-query heads and rotary position embeddings.</summary>
public sealed class LlamaAttention : Module
{
    private readonly LlamaConfig config;

    public LlamaAttention(LlamaConfig config, Generator? gen, DType dtype, Device device)
    {
        this.config = config;
        int c = config.HiddenSize, hs = config.HeadDim;
        RegisterModule("q_proj", new Linear(c, config.NumAttentionHeads * hs, false, gen, dtype, device, init: false));
        RegisterModule("k_proj", new Linear(c, config.NumKeyValueHeads * hs, false, gen, dtype, device, init: false));
        RegisterModule("v_proj", new Linear(c, config.NumKeyValueHeads * hs, false, gen, dtype, device, init: false));
        RegisterModule("o_proj", new Linear(config.NumAttentionHeads * hs, c, false, gen, dtype, device, init: false));
    }

    // The children are read from the registry on each use, so a module swapped in with ReplaceModule (a
    // LoraLinear in a projection's place, and back) is the one that computes.
    public Linear QProj => Child<Linear>("q_proj");
    public Linear KProj => Child<Linear>("k_proj");
    public Linear VProj => Child<Linear>("v_proj");
    public Linear OProj => Child<Linear>("o_proj");

    /// <summary>x (B, T, C) at positions start..start+T-1 -> (B, T, C). With a cache, keys/values of earlier tokens come from it.</summary>
    public Tensor Forward(Tensor x, RotaryEmbedding rope, int start, KvCache? cache, int layer)
    {
        int b = x.Size(0), t = x.Size(1);
        int nh = config.NumAttentionHeads, nkv = config.NumKeyValueHeads, hs = config.HeadDim;
        var q = QProj.Forward(x).View(b, t, nh, hs);   // (B, T, NH, HS)
        var k = KProj.Forward(x).View(b, t, nkv, hs);  // (B, T, NKV, HS)
        var v = VProj.Forward(x).View(b, t, nkv, hs);  // (B, T, NKV, HS)
        var (cos, sin) = rope.Tables(start, t);        // (T, HS/2) each
        q = Functional.Rope(q, cos, sin, RopeLayout.RotateHalf).Transpose(1, 2); // (B, NH, T, HS)
        k = Functional.Rope(k, cos, sin, RopeLayout.RotateHalf).Transpose(1, 2); // (B, NKV, T, HS)
        v = v.Transpose(1, 2);                                                   // (B, NKV, T, HS)
        if (cache is not null) (k, v) = cache.Append(layer, k, v, start);        // (B, NKV, S, HS)
        var y = Functional.ScaledDotProductAttention(q, k, v, causal: true);     // (B, NH, T, HS)
        return OProj.Forward(y.Transpose(1, 2).Reshape(b, t, nh * hs));
    }
}

/// <summary>The SwiGLU feed-forward block.</summary>
public sealed class LlamaMlp : Module
{
    public LlamaMlp(LlamaConfig config, Generator? gen, DType dtype, Device device)
    {
        RegisterModule("gate_proj", new Linear(config.HiddenSize, config.IntermediateSize, false, gen, dtype, device, init: false));
        RegisterModule("up_proj", new Linear(config.HiddenSize, config.IntermediateSize, false, gen, dtype, device, init: false));
        RegisterModule("down_proj", new Linear(config.IntermediateSize, config.HiddenSize, false, gen, dtype, device, init: false));
    }

    public Linear GateProj => Child<Linear>("gate_proj");
    public Linear UpProj => Child<Linear>("up_proj");
    public Linear DownProj => Child<Linear>("down_proj");

    /// <summary>x (B, T, C) -> (B, T, C).</summary>
    public Tensor Forward(Tensor x) => DownProj.Forward(Functional.SwiGlu(GateProj.Forward(x), UpProj.Forward(x)));
}

/// <summary>One pre-norm transformer block.</summary>
public sealed class LlamaDecoderLayer : Module
{
    public LlamaDecoderLayer(LlamaConfig config, Generator? gen, DType dtype, Device device)
    {
        RegisterModule("self_attn", new LlamaAttention(config, gen, dtype, device));
        RegisterModule("mlp", new LlamaMlp(config, gen, dtype, device));
        RegisterModule("input_layernorm", new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype, device));
        RegisterModule("post_attention_layernorm", new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype, device));
    }

    public LlamaAttention SelfAttn => Child<LlamaAttention>("self_attn");
    public LlamaMlp Mlp => Child<LlamaMlp>("mlp");
    public RmsNorm InputLayernorm => Child<RmsNorm>("input_layernorm");
    public RmsNorm PostAttentionLayernorm => Child<RmsNorm>("post_attention_layernorm");

    /// <summary>x (B, T, C) -> (B, T, C): the residual stream, spelled out.</summary>
    public Tensor Forward(Tensor x, RotaryEmbedding rope, int start, KvCache? cache, int layer)
    {
        x = x + SelfAttn.Forward(InputLayernorm.Forward(x), rope, start, cache, layer);
        x = x + Mlp.Forward(PostAttentionLayernorm.Forward(x));
        return x;
    }
}

/// <summary>The decoder stack without the language-model head ("model." in checkpoints).</summary>
public sealed class LlamaModel : Module
{
    public LlamaModel(LlamaConfig config, Generator? gen, DType dtype, Device device)
    {
        RegisterModule("embed_tokens", new Embedding(config.VocabSize, config.HiddenSize, gen, dtype, device, init: false));
        RegisterModule("layers", new ModuleList<LlamaDecoderLayer>(
            Enumerable.Range(0, config.NumHiddenLayers).Select(_ => new LlamaDecoderLayer(config, gen, dtype, device))));
        RegisterModule("norm", new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype, device));
    }

    public Embedding EmbedTokens => Child<Embedding>("embed_tokens");
    public ModuleList<LlamaDecoderLayer> Layers => Child<ModuleList<LlamaDecoderLayer>>("layers");
    public RmsNorm Norm => Child<RmsNorm>("norm");
}

/// <summary>LLaMA with its language-model head: token ids in, next-token logits out.</summary>
public sealed class LlamaForCausalLM : Module
{
    private readonly RotaryEmbedding rope;

    /// <summary>
    /// A model with random weights (normal(0, 0.02) as HF's initializer_range, norms 1) from a seeded
    /// generator; with <paramref name="initialize"/> false the weights stay zero (for loading).
    /// </summary>
    public LlamaForCausalLM(LlamaConfig config, Generator? generator = null, DType dtype = DType.F32, Device? device = null, bool initialize = true)
    {
        Config = config;
        var dev = device ?? Device.Cpu;
        RegisterModule("model", new LlamaModel(config, generator, dtype, dev));
        if (!config.TieWordEmbeddings)
            RegisterModule("lm_head", new Linear(config.HiddenSize, config.VocabSize, false, generator, dtype, dev, init: false));
        rope = new RotaryEmbedding(config, dtype, dev);
        if (initialize) InitWeights(generator ?? Generator.Default);
    }

    public LlamaConfig Config { get; }
    public LlamaModel Model => Child<LlamaModel>("model");

    /// <summary>
    /// Recompute each decoder layer in the backward pass instead of keeping its activations
    /// (training only; memory per layer drops to its input, compute rises by one forward).
    /// </summary>
    public bool GradientCheckpointing { get; set; }

    /// <summary>The generator any dropout inside the layers draws from, rewound for recomputation.</summary>
    public Generator? CheckpointRng { get; set; }

    /// <summary>Null when the head is tied to the embedding.</summary>
    public Linear? LmHead => Config.TieWordEmbeddings ? null : Child<Linear>("lm_head");

    private void InitWeights(Generator gen)
    {
        using var _ = GradMode.NoGrad();
        foreach (var (name, p) in NamedParameters())
        {
            if (name.EndsWith("layernorm.weight", StringComparison.Ordinal) || name == "model.norm.weight") continue;
            p.CopyFrom_(Tensor.RandN(p.Shape, gen, DType.F32, p.Device, 0, 0.02));
        }
    }

    /// <summary>
    /// ids (B, T) int32 -> logits (B, T, V); with <paramref name="lastOnly"/>, (B, 1, V) for the last
    /// position only (generation needs no more). With a cache, the ids continue the cached sequence and
    /// the cache grows by T.
    /// </summary>
    public Tensor Forward(Tensor ids, KvCache? cache = null, bool lastOnly = false)
    {
        var h = HiddenStates(ids, cache, lastOnly);              // (B, T, C)
        return LmHead is not null ? LmHead.Forward(h) : Model.EmbedTokens.Attend(h); // (B, T, V)
    }

    /// <summary>
    /// ids (B, T) int32 -> the final hidden states (B, T, C) after model.norm, before the language-model
    /// head (what a reward model's score head reads); <paramref name="cache"/> and <paramref name="lastOnly"/>
    /// as in <see cref="Forward"/>.
    /// </summary>
    public Tensor HiddenStates(Tensor ids, KvCache? cache = null, bool lastOnly = false)
    {
        if (ids.DType != DType.I32 || ids.Rank != 2) throw new ArgumentException($"Forward expects int32 ids of shape (B, T), got {ids.DType.Name()} {Shapes.Format(ids.Shape)}");
        var device = Model.EmbedTokens.Weight.Device;
        if (ids.Device != device)
        {
            Functional.CheckEmbeddingIds(ids, Config.VocabSize); // while they are still in host memory
            ids = ids.To(device);
        }
        int t = ids.Size(1);
        int start = cache?.Length ?? 0;
        if (start + t > Config.MaxPositionEmbeddings)
            throw new ArgumentException($"sequence of {start + t} tokens exceeds max_position_embeddings {Config.MaxPositionEmbeddings}");
        var h = Model.EmbedTokens.Forward(ids);                 // (B, T, C)
        for (int i = 0; i < Model.Layers.Count; i++)
        {
            var layer = Model.Layers[i];
            int index = i;
            h = GradientCheckpointing && cache is null && GradMode.IsEnabled
                ? ActivationCheckpoint.Run(x => layer.Forward(x, rope, start, null, index), h, layer.Parameters().ToList(), CheckpointRng)
                : layer.Forward(h, rope, start, cache, i);
        }
        if (cache is not null) cache.Length = start + t;
        if (lastOnly) h = h.Narrow(1, t - 1, 1);
        return Model.Norm.Forward(h);
    }

    /// <summary>
    /// The most tokens a cache holds when its caller does not say (llama.cpp's default n_ctx): the cache is
    /// allocated whole, and a config may claim a context far longer than any sequence it will see.
    /// </summary>
    public const int DefaultCacheTokens = 4096;

    /// <summary>
    /// A cache sized for batch and maxTokens (at most max_position_embeddings; when not given,
    /// max_position_embeddings but at most <see cref="DefaultCacheTokens"/>), in the dtype of the model's
    /// activations (f32, f64, f16 or bf16: the keys and values are written as the projections compute them).
    /// </summary>
    public KvCache NewCache(int batch = 1, int? maxTokens = null)
    {
        var p = Model.EmbedTokens.Weight;
        var rows = Model.EmbedTokens is QuantizedEmbedding q ? q.OutputDType : p.DType; // a block table's rows come out in the model's dtype
        int tokens = Math.Min(maxTokens ?? DefaultCacheTokens, Config.MaxPositionEmbeddings);
        return new KvCache(Config, batch, tokens, rows.IsFloat() ? rows : DType.F32, p.Device);
    }

    /// <summary>
    /// Builds a model and takes its weights from a checkpoint's tensors (HF names). f32 tensors are used
    /// in place (no copy); 16-bit ones are converted to <paramref name="dtype"/>. <paramref name="source"/>
    /// (the checkpoint's path) begins every error: a tensor missing, of the wrong shape or not the model's.
    /// </summary>
    public static LlamaForCausalLM FromWeights(LlamaConfig config, IReadOnlyDictionary<string, Tensor> weights, DType dtype = DType.F32, Device? device = null,
        string source = "weights")
    {
        var dev = device ?? Device.Cpu;
        // Before anything is sized by the config: every tensor it implies present with the implied shape.
        Checkpoint.CheckWeights(config, weights, source);
        var model = new LlamaForCausalLM(config, null, dtype, device, initialize: false);
        // A block-quantized weight (a GGUF q4_0/q8_0 file) stays in its blocks: its Linear or Embedding gives
        // way to a QuantizedLinear or QuantizedEmbedding over the tensor, which keeps the parameter's name.
        foreach (var (name, module) in model.NamedModules().ToList())
        {
            if (module is not (Linear or Embedding) || !weights.TryGetValue(name + ".weight", out var blocks) || !blocks.DType.IsQuantized()) continue;
            blocks = blocks.Device == dev ? blocks.Detach() : blocks.Detach().To(dev);
            model.ReplaceModule(name, module is Linear ? new QuantizedLinear(blocks) : new QuantizedEmbedding(blocks, dtype));
        }
        var state = new Dictionary<string, Tensor>();
        foreach (var (name, p) in model.NamedParameters())
        {
            if (!weights.TryGetValue(name, out var w)) throw new InvalidDataException($"{source}: tensor {MessageText.Quote(name)} is missing");
            state[name] = w.DType.IsQuantized() ? p
                : w.DType == dtype && w.Device == dev ? w.Detach() : w.Detach().To(dtype).To(dev);
        }
        foreach (var name in weights.Keys)
            if (!state.ContainsKey(name) && !(config.TieWordEmbeddings && name == "lm_head.weight") && !name.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal))
                throw new InvalidDataException($"{source}: unexpected tensor {MessageText.Quote(name)} (not a weight of this model)");
        model.LoadStateDict(state, strict: true, copy: false);
        return model;
    }
}

/// <summary>
/// RoPE cos/sin tables (angles in f64, as the references do), tabulated for the positions used so far: they
/// grow, doubling, to the highest position asked for, never beyond max_position_embeddings, so a model whose
/// config claims a context of millions costs only what its sequences use.
/// </summary>
public sealed class RotaryEmbedding
{
    private const int MinRows = 64;
    private readonly double[] invFreq;
    private readonly int maxPositions;
    private readonly DType dtype;
    private readonly Device device;
    private readonly Lock growing = new();
    private Tensor? cos, sin; // (rows, HS/2)
    private int rows;

    public RotaryEmbedding(LlamaConfig config, DType dtype, Device device)
    {
        invFreq = config.RopeInverseFrequencies();
        maxPositions = config.MaxPositionEmbeddings;
        this.dtype = dtype.IsHalf() ? DType.F32 : dtype;
        this.device = device;
    }

    /// <summary>Positions tabulated so far.</summary>
    public int Rows => rows;

    /// <summary>Rows start..start+count-1 of the cos and sin tables (views), each (count, HS/2).</summary>
    public (Tensor Cos, Tensor Sin) Tables(int start, int count)
    {
        if (start < 0 || count < 0 || (long)start + count > maxPositions)
            throw new ArgumentException($"positions {start} to {(long)start + count - 1} are outside max_position_embeddings {maxPositions}");
        lock (growing)
        {
            if (start + count > rows || cos is null) Grow(start + count);
            return (cos!.Narrow(0, start, count), sin!.Narrow(0, start, count));
        }
    }

    private void Grow(int needed)
    {
        int n = (int)Math.Min(maxPositions, Math.Max(needed, Math.Max(MinRows, 2L * rows)));
        using var _ = DisposeScope.Untracked();   // the tables outlive the (possibly scoped) forward that grows them
        (cos, sin) = Functional.RopeTables(invFreq, 0, n, dtype, device);
        rows = n;
    }
}

/// <summary>Keys and values of the tokens seen so far, per layer: (B, NKV, maxTokens, HS) each.</summary>
public sealed class KvCache
{
    private readonly Tensor[] keys, values;

    public KvCache(LlamaConfig config, int batch, int maxTokens, DType dtype, Device device)
    {
        if (batch < 1 || maxTokens < 1)
            throw new ArgumentException($"a KV cache needs batch >= 1 and capacity >= 1 token, got batch {batch} and {maxTokens} tokens");
        MaxTokens = maxTokens;
        Batch = batch;
        keys = new Tensor[config.NumHiddenLayers];
        values = new Tensor[config.NumHiddenLayers];
        for (int i = 0; i < keys.Length; i++)
        {
            keys[i] = Tensor.Zeros([batch, config.NumKeyValueHeads, maxTokens, config.HeadDim], dtype, device);
            values[i] = Tensor.Zeros([batch, config.NumKeyValueHeads, maxTokens, config.HeadDim], dtype, device);
        }
    }

    /// <summary>Tokens cached so far.</summary>
    public int Length { get; internal set; }

    /// <summary>Capacity in tokens.</summary>
    public int MaxTokens { get; }

    /// <summary>Sequences cached side by side (B).</summary>
    public int Batch { get; }

    /// <summary>The whole key buffer of a layer, (B, NKV, maxTokens, HS).</summary>
    internal Tensor Keys(int layer) => keys[layer];

    /// <summary>The whole value buffer of a layer, (B, NKV, maxTokens, HS).</summary>
    internal Tensor Values(int layer) => values[layer];

    /// <summary>Stores k, v (B, NKV, T, HS) at positions start.. and returns all cached keys/values (B, NKV, start+T, HS).</summary>
    internal (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v, int start)
    {
        int t = k.Size(2);
        if (start + t > MaxTokens) throw new InvalidOperationException($"KV cache full: {start + t} tokens > capacity {MaxTokens}");
        using (GradMode.NoGrad())
        {
            keys[layer].Narrow(2, start, t).CopyFrom_(k);
            values[layer].Narrow(2, start, t).CopyFrom_(v);
        }
        return (keys[layer].Narrow(2, 0, start + t), values[layer].Narrow(2, 0, start + t));
    }

    /// <summary>Forgets everything (the buffers are reused).</summary>
    public void Reset() => Length = 0;
}
