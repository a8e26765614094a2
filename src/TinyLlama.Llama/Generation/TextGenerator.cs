// Autoregressive generation with a KV cache: prefill the prompt in one forward pass, then decode one
// token per step, streaming each id to the caller as soon as it is chosen. Single-token steps run CpuDecoder
// when it applies (f32 or block-quantized weights on the CPU), the same math without per-op overheads; prefill
// runs the decoder's integer GEMM pass for Q4_0 models (CpuDecoder.Prefill.cs), else the decoder's multi-row
// steps over the prompt (CpuDecoder.PrefillRows: bit for bit the same as stepping token by token), and the
// modules where the decoder does not apply (their GEMMs reuse each weight across the prompt's tokens).
using TinyLlama.Autograd;
using TinyLlama.Backends.Cpu;
using TinyLlama.Model;

namespace TinyLlama.Generation;

/// <summary>Generates token ids from a model.</summary>
public static class TextGenerator
{
    /// <summary>
    /// Yields up to maxNewTokens ids after the prompt, stopping after an id in <paramref name="stopIds"/>
    /// (which is yielded) or when the context is full. <paramref name="useCpuDecoder"/> false keeps every
    /// step on the modules (for comparisons).
    /// </summary>
    public static IEnumerable<int> Generate(LlamaForCausalLM model, IReadOnlyList<int> prompt, int maxNewTokens, SamplingOptions options, IReadOnlyCollection<int>? stopIds = null, bool useCpuDecoder = true)
    {
        if (prompt.Count == 0) throw new ArgumentException("generation needs at least one prompt token (e.g. BOS)");
        if (maxNewTokens < 0) throw new ArgumentException($"max tokens must be >= 0, got {maxNewTokens}");
        int vocab = model.Config.VocabSize;
        foreach (int id in prompt)
            if ((uint)id >= (uint)vocab) throw new ArgumentException($"prompt id {id} is out of range for a vocabulary of {vocab}");
        var sampler = new Sampler(options);
        int capacity = Math.Min(model.Config.MaxPositionEmbeddings, prompt.Count + maxNewTokens);
        if (prompt.Count > capacity || prompt.Count > model.Config.MaxPositionEmbeddings)
            throw new ArgumentException($"prompt of {prompt.Count} tokens exceeds the context of {model.Config.MaxPositionEmbeddings}");
        var cache = model.NewCache(1, capacity);
        var seen = new List<int>(prompt);
        using var decoder = useCpuDecoder ? CpuDecoder.TryCreate(model, cache, out _) : null;
        var input = prompt.ToArray();
        for (int step = 0; step < maxNewTokens && cache.Length + input.Length <= capacity; step++)
        {
            int next = sampler.Sample(Forward(model, decoder, input, cache), seen);
            yield return next;
            seen.Add(next);
            if (stopIds is not null && stopIds.Contains(next)) yield break;
            input = [next];
        }
    }

    /// <summary>
    /// Last-position logits [V] of <paramref name="ids"/> continuing the cached sequence, by the fastest path that
    /// applies: the decoder's step for one token, its prefill for several (<see cref="CpuDecoder.CanPrefill"/>:
    /// the integer GEMM for Q4_0; else <see cref="CpuDecoder.CanPrefillRows"/>: the prompt as the rows of
    /// multi-row steps), else the modules. Valid until the decoder's next call.
    /// </summary>
    public static ReadOnlySpan<float> Forward(LlamaForCausalLM model, CpuDecoder? decoder, scoped ReadOnlySpan<int> ids, KvCache cache) =>
        decoder is null ? ModuleForward(model, ids.ToArray(), cache)
        : ids.Length == 1 ? decoder.Step(ids[0])
        : decoder.CanPrefill ? decoder.Prefill(ids)
        : decoder.CanPrefillRows ? decoder.PrefillRows(ids)
        : ModuleForward(model, ids.ToArray(), cache);

    /// <summary>
    /// Last-position logits [V] of ids continuing the cached sequence, through the modules. Block-quantized products
    /// run as the decoder's do (<paramref name="activations"/>, default <see cref="CpuDecoder.DefaultActivations"/>):
    /// with Q8_0 activations and the integer GEMM over Q4_0 weights on the CPU unless f32 activations are asked for.
    /// </summary>
    public static float[] ModuleForward(LlamaForCausalLM model, int[] ids, KvCache cache, DecoderActivations? activations = null)
    {
        using var integer = CpuBackend.UseIntegerActivations((activations ?? CpuDecoder.DefaultActivations) == DecoderActivations.Quantized);
        using (GradMode.NoGrad())
            return model.Forward(Tensor.FromArray(ids, [1, ids.Length]), cache, lastOnly: true).ToArray<float>();
    }
}
