// Several sequences decoding together on the CPU decoder's buffers (continuous batching, as llama.cpp's server
// runs its slots): one decoder over S KV caches (slots), each with its own position. One step takes one token per
// active slot (n <= S rows) and runs the decoder's layers of CpuDecoder.cs over the n rows at once:
//   - every projection (q, k, v, o, gate, up, down, the head) is one job over the n rows on the SpinPool workers:
//     f32 weights through CpuDecoder.Rows, which reads each weight row from memory once for all n rows (three rows
//     of x per pass from L1); block-quantized weights row of x by row of x over each chunk of weight rows, the
//     chunk read from memory once and from cache for the other rows;
//   - attention is one task per (row, head), over that row's slot cache;
//   - nothing is allocated per step: the activation buffers hold S rows from the start.
// Decoding is bound by reading the weights (stories15M: 58 MB of f32 per token, 37 MB of it the tied head), so a
// step of n tokens costs about one token's memory traffic plus n tokens' arithmetic.
//
// Exactness: every output element of a row is computed by the same code in the same order whatever the other rows
// are (CpuDecoder.Rows's contract; the quantized rows are the lone kernels called per row; attention and the row
// steps are per row), so a slot's logits equal a lone decoder's Step bit for bit, and a request's greedy output is
// the same alone or in a batch. A joining request is prefilled into its slot as a lone decoder prefills
// (TextGenerator.Forward: Prefill for Q4_0 models, else PrefillRows: the prompt's tokens as the rows of
// multi-row steps on that one slot, each equal to a lone Step at its position bit for bit).
using TinyLlama.Backends.Cpu;
using TinyLlama.Model;
using TinyLlama.NN;

namespace TinyLlama.Generation;

public sealed unsafe partial class CpuDecoder
{
    /// <summary>
    /// A decoder for <paramref name="model"/> over several caches (slots) that decode together (see the file
    /// header), or null with the reason when this path does not apply: whatever <see cref="TryCreate"/> refuses,
    /// LoRA adapters (not merged: the batched step has no per-row adapter term), or caches of different sizes.
    /// </summary>
    internal static CpuDecoder? TryCreateSlots(LlamaForCausalLM model, IReadOnlyList<KvCache> caches, out string? reason, SpinPool? pool = null, DecoderActivations? activations = null)
    {
        ArgumentNullException.ThrowIfNull(caches);
        if (caches.Count == 0) throw new ArgumentException("a decoder needs at least one cache", nameof(caches));
        reason = BatchUnsupported(model);
        foreach (var c in caches)
        {
            reason ??= Unsupported(c);
            if (c.MaxTokens != caches[0].MaxTokens) reason ??= $"caches of {c.MaxTokens} and {caches[0].MaxTokens} tokens (the slots share one size)";
        }
        return reason is null ? new CpuDecoder(model, [.. caches], pool ?? SpinPool.Shared, activations ?? DefaultActivations) : null;
    }

    /// <summary>Why a batched decoder over slots does not apply to <paramref name="model"/>, or null when it does.</summary>
    internal static string? BatchUnsupported(LlamaForCausalLM model)
    {
        if (Unsupported(model) is { } why) return why;
        foreach (var (name, module) in model.NamedModules())
            if (module is LoraLinear) return $"{name} has a LoRA adapter (merge it for batched decoding)";
        return null;
    }

    /// <summary>Makes <see cref="Step(int)"/> and <see cref="Prefill"/> run on <paramref name="slot"/>'s cache.</summary>
    internal void Bind(int slot)
    {
        if ((uint)slot >= (uint)caches.Length) throw new ArgumentOutOfRangeException(nameof(slot), slot, $"slot out of range [0, {caches.Length})");
        bound = slot;
        cache = caches[slot];
    }

    /// <summary>Most prompt tokens one <see cref="PrefillRows"/> step holds (longer prompts run in chunks of this many).</summary>
    internal const int PrefillRowsChunk = 16;

    /// <summary>Why <see cref="PrefillRows"/> does not apply to this decoder, or null when it does.</summary>
    public string? PrefillRowsUnsupported { get; private set; }

    /// <summary>True when <see cref="PrefillRows"/> applies (see <see cref="PrefillRowsUnsupported"/>).</summary>
    public bool CanPrefillRows => PrefillRowsUnsupported is null;

    /// <summary>
    /// Runs <paramref name="tokens"/> at positions cache.Length onwards as the rows of multi-row steps (chunks of
    /// up to PrefillRowsChunk tokens, or the slot count when larger): each weight is read once per chunk, and each
    /// token's numbers are those of <see cref="Step(int)"/> at its position bit for bit, since a row is computed the
    /// same way whatever the other rows are and its keys and values are cached before any row attends. Returns the
    /// logits [V] after the last token (valid until the next call). For f32 and block weights other than the
    /// repacked Q4_0 of <see cref="Prefill"/>; not with LoRA adapters (<see cref="CanPrefillRows"/>).
    /// </summary>
    public ReadOnlySpan<float> PrefillRows(scoped ReadOnlySpan<int> tokens)
    {
        CheckPrefill(tokens, PrefillRowsUnsupported, "prefill as rows");
        int chunk = rowSlot.Length;
        for (int start = 0; start < tokens.Length; start += chunk)
        {
            int n = Math.Min(chunk, tokens.Length - start);
            for (int i = 0; i < n; i++)
            {
                rowSlot[i] = bound;
                rowToken[i] = tokens[start + i];
            }
            logitRow[0] = n - 1;
            Decode(n, logitRow, start + n == tokens.Length ? 1 : 0);
        }
        return new ReadOnlySpan<float>(logits, vocab);
    }

    /// <summary>
    /// Prefills several slots together (requests joining at one step): <paramref name="prompts"/>[i] continues
    /// slot <paramref name="slots"/>[i] (distinct slots). The prompts' tokens run as the rows of shared multi-row
    /// steps, in order, so each token's numbers are those of <see cref="Step(int)"/> on its own slot bit for bit
    /// (as in <see cref="PrefillRows"/>); row i of <paramref name="lastLogits"/> [count, V] receives the logits
    /// after prompt i's last token. The steps keep each prompt's last hidden state and one head run at the end
    /// covers them all: the head is the largest matrix (stories15M: 37 MB of its 58), and eight prompts of 35
    /// tokens ending in eight different steps had read it eight times. Only where <see cref="CanPrefillRows"/>.
    /// </summary>
    internal void PrefillSlots(ReadOnlySpan<int> slots, IReadOnlyList<IReadOnlyList<int>> prompts, Span<float> lastLogits)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (PrefillRowsUnsupported is { } why) throw new InvalidOperationException($"prefill as rows does not apply: {why}");
        int count = slots.Length;
        if (prompts.Count != count) throw new ArgumentException($"{count} slots but {prompts.Count} prompts");
        if (lastLogits.Length < (long)count * vocab) throw new ArgumentException($"logits for {count} prompts need {(long)count * vocab} floats, got {lastLogits.Length}");
        for (int i = 0; i < count; i++)
        {
            int s = slots[i];
            if ((uint)s >= (uint)caches.Length) throw new ArgumentOutOfRangeException(nameof(slots), s, $"slot out of range [0, {caches.Length})");
            for (int j = 0; j < i; j++)
                if (slots[j] == s) throw new ArgumentException($"slot {s} appears twice in one prefill");
            if (prompts[i].Count == 0) throw new ArgumentException("prefill needs at least one token", nameof(prompts));
            foreach (int t in prompts[i])
                if ((uint)t >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(prompts), t, $"token id out of range for a vocabulary of {vocab}");
            CheckRoom(caches[s], prompts[i].Count);
        }
        // Prompt i's last hidden state goes to finals row i: the prompts end in order, one wanted row each.
        int chunk = rowSlot.Length, n = 0, wanted = 0, kept = 0;
        void Flush()
        {
            Decode(n, logitRow, wanted, finals + (long)kept * dim);
            kept += wanted;
            n = 0;
            wanted = 0;
        }
        for (int i = 0; i < count; i++)
        {
            var prompt = prompts[i];
            for (int t = 0; t < prompt.Count; t++)
            {
                rowSlot[n] = slots[i];
                rowToken[n] = prompt[t];
                if (t == prompt.Count - 1) logitRow[wanted++] = n;
                if (++n == chunk) Flush();
            }
        }
        if (n > 0) Flush();
        Head(finals, null, count);
        new ReadOnlySpan<float>(logits, count * vocab).CopyTo(lastLogits);
    }

    /// <summary>
    /// One batched step: token <paramref name="tokens"/>[i] continues slot <paramref name="slots"/>[i] (distinct
    /// slots, each with room for one more token). Returns the next-token logits [n, V], row i for slot i's token
    /// (valid until the next call).
    /// </summary>
    internal ReadOnlySpan<float> Step(ReadOnlySpan<int> slots, ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        int n = slots.Length;
        if (tokens.Length != n) throw new ArgumentException($"{n} slots but {tokens.Length} tokens");
        if (n > caches.Length) throw new ArgumentException($"{n} rows in one step, more than the {caches.Length} slots");
        for (int i = 0; i < n; i++)
        {
            int s = slots[i];
            if ((uint)s >= (uint)caches.Length) throw new ArgumentOutOfRangeException(nameof(slots), s, $"slot out of range [0, {caches.Length})");
            for (int j = 0; j < i; j++)
                if (slots[j] == s) throw new ArgumentException($"slot {s} appears twice in one step");
            if ((uint)tokens[i] >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(tokens), tokens[i], $"token id out of range for a vocabulary of {vocab}");
            CheckRoom(caches[s], 1);
            rowSlot[i] = s;
            rowToken[i] = tokens[i];
        }
        if (n > 0) Decode(n);
        return new ReadOnlySpan<float>(logits, n * vocab);
    }

    /// <summary>
    /// <see cref="Step(ReadOnlySpan{int}, ReadOnlySpan{int})"/>, and also each row's greedy token in
    /// <paramref name="greedy"/>[i]: what <see cref="Sampler"/> picks at temperature 0 from row i of the returned
    /// logits, or -1 where that row holds a NaN or an infinity (Sample reports those). The head's chunks find
    /// their parts of it while their outputs are still in their core's cache (Sampler.GreedyIndex), so a batched
    /// step does not read its 8 x 32000 logits again from the other core's cache to sample them; this step
    /// combines the parts in chunk order.
    /// </summary>
    internal ReadOnlySpan<float> Step(ReadOnlySpan<int> slots, ReadOnlySpan<int> tokens, Span<int> greedy)
    {
        int n = slots.Length;
        if (greedy.Length < n) throw new ArgumentException($"{n} rows but room for {greedy.Length} greedy tokens");
        int chunks = headJob.ChunkCount;
        if (greedyParts.Length < chunks * n) greedyParts = new int[chunks * caches.Length];
        headJob.Argmax = greedyParts;
        ReadOnlySpan<float> rows;
        try
        {
            rows = Step(slots, tokens);
        }
        finally
        {
            headJob.Argmax = null;
        }
        for (int i = 0; i < n; i++)
        {
            int best = -1;
            float value = 0;
            for (int c = 0; c < chunks; c++)
            {
                int at = greedyParts[c * n + i];
                if (at < 0) { best = -1; break; }
                float v = rows[i * vocab + at];
                if (best < 0 || v > value) { best = at; value = v; }
            }
            greedy[i] = best;
        }
        return rows;
    }

    private int[] greedyParts = [];
}
