// Decoding several independent sequences at once (continuous batching, as llama.cpp's server and vLLM
// do it): S slots, each with its own KV cache and position. One step takes one new token per active
// slot and runs every weight product of the model over all of them together, so the weights, which a
// one-token step reads once for a single token's ~2 flops per weight, are read once for many tokens.
// Attention stays per slot, over that slot's own cache and position.
//
// Two paths, chosen per model as TextGenerator.Forward chooses between the decoder and the modules:
//   - the CPU decoder (CpuDecoder.Batch.cs), where it applies (f32 or block-quantized weights on the CPU, no
//     unmerged LoRA adapter): one step over every active slot on the decoder's buffers and workers, each slot's
//     logits equal to a lone CpuDecoder.Step's bit for bit, so a request's answer is TextGenerator's (which
//     decodes on that decoder) alone or batched; joining prompts are prefilled as TextGenerator.Forward does;
//   - the modules otherwise (f16/bf16 weights, LoRA adapters, other devices), described below.
//
// The module path's products are the modules' own (Linear.Forward, QuantizedLinear, LoraLinear: every CpuBackend GEMM,
// f32 and block-quantized) on x [n, C] with n <= RowsPerProduct = Gemm.SmallMMax rows, the CPU backend's
// unpacked small-M path: W is streamed once per call and each output element is one dot product of an x
// row with a W row, computed the same way whatever n is. A larger batch runs in chunks of that many
// rows, so a slot's logits do not depend on which other slots share its step: a request's greedy output
// is the same alone or in a batch of S, and equal bit for bit to the module path one token at a time
// (TextGenerator with useCpuDecoder: false; BatchedDecoderTests checks both).
//
// Per chunk of n slots, for the step's tokens ids [n] (slot r at its own position p_r):
//   h = embed(ids)                                              [n, 1, C]
//   per layer: xn = rmsnorm(h) * attn_norm; q, k, v = xn Wq^T, xn Wk^T, xn Wv^T     (one GEMM each)
//              rope(q, k), row r at p_r; per slot r: k_r, v_r -> cache_r[p_r]; att_r = sdpa(q_r, cache_r)
//              h += att Wo^T;  h += mlp(rmsnorm(h) * mlp_norm)                     (GEMMs over n rows)
//   logits = rmsnorm(h) W_head^T                                [n, 1, V]
// On this path a joining request's prompt is prefilled alone through the modules' GEMMs over its tokens.
using TinyLlama.Autograd;
using TinyLlama.Backends;
using TinyLlama.Backends.Cpu;
using TinyLlama.Model;
using TinyLlama.Tensors;

namespace TinyLlama.Generation;

/// <summary>
/// Decodes up to <see cref="Slots"/> sequences together, one batched forward per step over their
/// separate KV caches (see the file header). Not thread-safe: one thread (a scheduler's loop) drives it.
/// </summary>
public sealed class BatchedDecoder : IDisposable
{
    /// <summary>Rows per weight product on the module path: the CPU backend's small-M GEMM limit (Gemm.SmallMMax), see the file header.</summary>
    public const int RowsPerProduct = 4;

    private readonly LlamaForCausalLM model;
    private readonly KvCache[] caches;
    private readonly float[] cosTable, sinTable; // RoPE rows for positions 0..contextSize-1, (T, HS/2) each, as RotaryEmbedding tabulates them
    private readonly DecoderActivations activations;
    private readonly CpuDecoder? cpu;            // the CPU decoder path, or null for the modules

    /// <param name="model">The model (in eval mode), on the CPU.</param>
    /// <param name="slots">Sequences that can decode together (S).</param>
    /// <param name="contextSize">Tokens each slot's cache holds (at most max_position_embeddings).</param>
    /// <param name="activations">How block-quantized products treat their input (default <see cref="CpuDecoder.DefaultActivations"/>).</param>
    /// <param name="useCpuDecoder">False keeps every step on the modules (for comparisons); true takes the CPU decoder where it applies.</param>
    public BatchedDecoder(LlamaForCausalLM model, int slots, int contextSize, DecoderActivations? activations = null, bool useCpuDecoder = true)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (slots < 1) throw new ArgumentException($"a batched decoder needs at least 1 slot, got {slots}");
        if (contextSize < 1 || contextSize > model.Config.MaxPositionEmbeddings)
            throw new ArgumentException($"context size must be in [1, {model.Config.MaxPositionEmbeddings}] (max_position_embeddings), got {contextSize}");
        this.model = model;
        this.activations = activations ?? CpuDecoder.DefaultActivations;
        caches = new KvCache[slots];
        for (int i = 0; i < slots; i++) caches[i] = model.NewCache(1, contextSize);
        var weight = model.Model.Norm.Weight;
        var (cos, sin) = new RotaryEmbedding(model.Config, weight.DType, weight.Device).Tables(0, contextSize);
        cosTable = cos.ToArray<float>();
        sinTable = sin.ToArray<float>();
        ContextSize = contextSize;
        string? why = "the modules were asked for";
        cpu = useCpuDecoder ? CpuDecoder.TryCreateSlots(model, caches, out why, activations: this.activations) : null;
        Path = cpu is not null ? $"cpu decoder ({this.activations.ToString().ToLowerInvariant()} activations)" : $"modules ({why})";
    }

    /// <summary>
    /// Why the CPU decoder's batched step does not apply to <paramref name="model"/> (the decoder then runs the
    /// modules), or null when it does.
    /// </summary>
    public static string? CpuDecoderUnsupported(LlamaForCausalLM model) => CpuDecoder.BatchUnsupported(model);

    /// <summary>True when steps run on the CPU decoder (each slot equal to a lone <see cref="CpuDecoder"/> bit for bit), false on the modules.</summary>
    public bool UsesCpuDecoder => cpu is not null;

    /// <summary>Which path runs the steps, in words (for logs and benchmark output).</summary>
    public string Path { get; }

    /// <summary>Releases the CPU decoder's pinned weights.</summary>
    public void Dispose() => cpu?.Dispose();

    /// <summary>Number of slots (S).</summary>
    public int Slots => caches.Length;

    /// <summary>Tokens each slot's cache holds.</summary>
    public int ContextSize { get; }

    /// <summary>Vocabulary size (V): the length of each logits row.</summary>
    public int VocabSize => model.Config.VocabSize;

    /// <summary>Tokens cached in <paramref name="slot"/>.</summary>
    public int Length(int slot) => caches[slot].Length;

    /// <summary>Empties <paramref name="slot"/> for a new sequence.</summary>
    public void Reset(int slot) => caches[slot].Reset();

    /// <summary>
    /// True when a slot's cached tokens can start a new sequence that shares them (<see cref="Truncate"/>, then
    /// <see cref="Prefill(int, IReadOnlyList{int})"/> of the rest): every cached position, whether a prompt's
    /// prefill or a step wrote it, holds what a fresh prefill of the new sequence would write, bit for bit. That
    /// holds on the CPU decoder where prompts prefill as rows (each row equal to a lone step); not where a prompt
    /// runs as one GEMM (Q4_0's prefill) or through the modules, whose prefill and steps round differently.
    /// </summary>
    public bool ReusesPrefixes => cpu is { CanPrefill: false, CanPrefillRows: true };

    /// <summary>Keeps the first <paramref name="length"/> tokens of <paramref name="slot"/> and forgets the rest.</summary>
    public void Truncate(int slot, int length)
    {
        var cache = caches[slot];
        if ((uint)length > (uint)cache.Length) throw new ArgumentOutOfRangeException(nameof(length), length, $"slot {slot} holds {cache.Length} tokens");
        cache.Length = length;
    }

    /// <summary>
    /// Runs <paramref name="ids"/> after what <paramref name="slot"/> holds (as TextGenerator's prefill does: the
    /// CPU decoder's prefill or step where the path and model allow, the modules otherwise) and returns the last
    /// position's logits [V].
    /// </summary>
    public float[] Prefill(int slot, IReadOnlyList<int> ids)
    {
        CheckPrompt(slot, ids);
        var cache = caches[slot];
        if (cpu is null) return TextGenerator.ModuleForward(model, [.. ids], cache, activations);
        cpu.Bind(slot);
        return TextGenerator.Forward(model, cpu, [.. ids], cache).ToArray();
    }

    /// <summary>
    /// Runs <paramref name="prompts"/>[i] after what slot <paramref name="slots"/>[i] holds, for requests joining
    /// together, and returns each one's last logits [V]. On the CPU decoder path (models whose prompts prefill as
    /// rows) the prompts share multi-row steps, each weight read once per chunk of rows whoever's they are, and
    /// every prompt's logits are what <see cref="Prefill(int, IReadOnlyList{int})"/> alone gives, bit for bit;
    /// otherwise the prompts run one after another through it.
    /// </summary>
    public float[][] Prefill(IReadOnlyList<int> slots, IReadOnlyList<IReadOnlyList<int>> prompts)
    {
        ArgumentNullException.ThrowIfNull(slots);
        ArgumentNullException.ThrowIfNull(prompts);
        if (slots.Count != prompts.Count) throw new ArgumentException($"{slots.Count} slots but {prompts.Count} prompts");
        if (cpu is null || !cpu.CanPrefillRows || slots.Count < 2)
            return [.. slots.Select((slot, i) => Prefill(slot, prompts[i]))];
        int vocab = VocabSize;
        for (int i = 0; i < slots.Count; i++) CheckPrompt(slots[i], prompts[i]);
        var all = new float[slots.Count * vocab];
        cpu.PrefillSlots([.. slots], prompts, all);
        return [.. Enumerable.Range(0, slots.Count).Select(i => all.AsSpan(i * vocab, vocab).ToArray())];
    }

    // A prompt for slot: at least one token, each in the vocabulary, and room for all of them in its cache.
    private void CheckPrompt(int slot, IReadOnlyList<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        if (ids.Count == 0) throw new ArgumentException("prefill needs at least one token");
        if (caches[slot].Length + ids.Count > ContextSize)
            throw new ArgumentException($"{caches[slot].Length + ids.Count} tokens exceed the context size of {ContextSize}");
        int vocab = VocabSize;
        foreach (int id in ids)
            if ((uint)id >= (uint)vocab) throw new ArgumentException($"token id {id} is out of range for a vocabulary of {vocab}");
    }

    /// <summary>
    /// One step: token <paramref name="tokens"/>[i] continues slot <paramref name="slots"/>[i] (distinct slots,
    /// each with room for one more token); writes the next-token logits of each into row i of
    /// <paramref name="logits"/> [n, V].
    /// </summary>
    public void Step(ReadOnlySpan<int> slots, ReadOnlySpan<int> tokens, Span<float> logits)
    {
        int n = slots.Length, vocab = VocabSize;
        if (logits.Length < (long)n * vocab) throw new ArgumentException($"logits hold {logits.Length} values; {n} rows of {vocab} need {(long)n * vocab}");
        CheckStep(slots, tokens);
        if (cpu is not null)
        {
            cpu.Step(slots, tokens).CopyTo(logits);
            return;
        }
        ModuleStep(slots, tokens, logits);
    }

    /// <summary>
    /// One step as <see cref="Step(ReadOnlySpan{int}, ReadOnlySpan{int}, Span{float})"/>, returning the logits
    /// [n, V] in the decoder's own buffer (valid until the next call) and, in <paramref name="greedy"/>[i], row
    /// i's greedy token as <see cref="Sampler"/> picks it at temperature 0, or -1 where the caller must sample
    /// the row itself (a NaN or an infinity in it, which Sample reports; or the module path, which does not
    /// find them). On the CPU decoder the head finds them while computing the logits (a batched server then
    /// reads no logits for its greedy requests).
    /// </summary>
    public ReadOnlySpan<float> Step(ReadOnlySpan<int> slots, ReadOnlySpan<int> tokens, Span<int> greedy)
    {
        int n = slots.Length;
        if (greedy.Length < n) throw new ArgumentException($"{n} rows but room for {greedy.Length} greedy tokens");
        CheckStep(slots, tokens);
        if (cpu is not null) return cpu.Step(slots, tokens, greedy);
        if (moduleLogits.Length < n * VocabSize) moduleLogits = new float[Slots * VocabSize];
        ModuleStep(slots, tokens, moduleLogits);
        greedy[..n].Fill(-1);
        return moduleLogits.AsSpan(0, n * VocabSize);
    }

    private float[] moduleLogits = [];

    private void CheckStep(ReadOnlySpan<int> slots, ReadOnlySpan<int> tokens)
    {
        int n = slots.Length, vocab = VocabSize;
        if (tokens.Length != n) throw new ArgumentException($"{n} slots but {tokens.Length} tokens");
        for (int i = 0; i < n; i++)
        {
            if ((uint)slots[i] >= (uint)Slots) throw new ArgumentOutOfRangeException(nameof(slots), slots[i], $"slot out of range [0, {Slots})");
            for (int j = 0; j < i; j++)
                if (slots[j] == slots[i]) throw new ArgumentException($"slot {slots[i]} appears twice in one step");
            if ((uint)tokens[i] >= (uint)vocab) throw new ArgumentException($"token id {tokens[i]} is out of range for a vocabulary of {vocab}");
            if (caches[slots[i]].Length + 1 > ContextSize) throw new InvalidOperationException($"slot {slots[i]} is full ({ContextSize} tokens)");
        }
    }

    private void ModuleStep(ReadOnlySpan<int> slots, ReadOnlySpan<int> tokens, Span<float> logits)
    {
        int n = slots.Length, vocab = VocabSize;
        using var integer = CpuBackend.UseIntegerActivations(activations == DecoderActivations.Quantized);
        using var noGrad = GradMode.NoGrad();
        for (int start = 0; start < n; start += RowsPerProduct)
        {
            int m = Math.Min(RowsPerProduct, n - start);
            var rows = Chunk(slots.Slice(start, m), tokens.Slice(start, m));
            rows.ToArray<float>().CopyTo(logits.Slice(start * vocab, m * vocab));
        }
    }

    // Logits (m, 1, V) of one chunk of m <= RowsPerProduct slots (the file header's recipe).
    private Tensor Chunk(ReadOnlySpan<int> slots, ReadOnlySpan<int> tokens)
    {
        var cfg = model.Config;
        int m = slots.Length, nh = cfg.NumAttentionHeads, nkv = cfg.NumKeyValueHeads, hs = cfg.HeadDim;
        var h = model.Model.EmbedTokens.Forward(Tensor.FromArray(tokens.ToArray(), [m, 1])); // (m, 1, C)
        var heads = new Tensor[m];
        // Each slot's RoPE row at its own position: the chunk rotates as one sequence of m tokens whose
        // table rows are those positions (RoPE is elementwise per token, so each row comes out as alone).
        int half = hs / 2;
        float[] cosRows = new float[m * half], sinRows = new float[m * half];
        for (int r = 0; r < m; r++)
        {
            int pos = caches[slots[r]].Length;
            Array.Copy(cosTable, pos * half, cosRows, r * half, half);
            Array.Copy(sinTable, pos * half, sinRows, r * half, half);
        }
        Tensor cos = Tensor.FromArray(cosRows, [m, half]), sin = Tensor.FromArray(sinRows, [m, half]); // (m, HS/2)
        for (int li = 0; li < model.Model.Layers.Count; li++)
        {
            var layer = model.Model.Layers[li];
            var attn = layer.SelfAttn;
            var xn = layer.InputLayernorm.Forward(h);
            var q = Functional.Rope(attn.QProj.Forward(xn).View(1, m, nh, hs), cos, sin, RopeLayout.RotateHalf);  // (1, m, NH, HS)
            var k = Functional.Rope(attn.KProj.Forward(xn).View(1, m, nkv, hs), cos, sin, RopeLayout.RotateHalf); // (1, m, NKV, HS)
            var v = attn.VProj.Forward(xn).View(1, m, nkv, hs);                                                   // (1, m, NKV, HS)
            for (int r = 0; r < m; r++)
            {
                var cache = caches[slots[r]];
                int pos = cache.Length;
                var qr = q.Narrow(1, r, 1).Transpose(1, 2); // (1, NH, 1, HS)
                var kr = k.Narrow(1, r, 1).Transpose(1, 2); // (1, NKV, 1, HS)
                var vr = v.Narrow(1, r, 1).Transpose(1, 2); // (1, NKV, 1, HS)
                var (keys, values) = cache.Append(li, kr, vr, pos);                                                               // (1, NKV, pos+1, HS)
                var y = Functional.ScaledDotProductAttention(qr, keys, values, causal: true);                                     // (1, NH, 1, HS)
                heads[r] = y.Transpose(1, 2).Reshape(1, 1, nh * hs);
            }
            h = h + attn.OProj.Forward(m == 1 ? heads[0] : Tensor.Concat(heads, 0));
            h = h + layer.Mlp.Forward(layer.PostAttentionLayernorm.Forward(h));
        }
        foreach (int s in slots) caches[s].Length++;
        h = model.Model.Norm.Forward(h);
        return model.LmHead is { } head ? head.Forward(h) : model.Model.EmbedTokens.Attend(h); // (m, 1, V)
    }
}
