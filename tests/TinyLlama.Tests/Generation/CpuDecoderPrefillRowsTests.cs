// CpuDecoder.PrefillRows: a prompt run as the rows of multi-row steps must leave the same cache and give the
// same logits, bit for bit, as running it one Step at a time (each row is computed by the code of a lone step
// and its keys and values are cached before any row attends), across chunk boundaries, for f32 and block
// weights; decoding then goes on identically. Where it does not apply (LoRA adapters) it refuses with a reason.
using TinyLlama.Autograd;
using TinyLlama.Backends.Cpu;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tests.Model;

namespace TinyLlama.Tests.Generation;

public class CpuDecoderPrefillRowsTests
{
    public static TheoryData<string, int> Cases() => new()
    {
        { "f32", 1 }, { "f32", 16 }, { "f32", 37 }, // one row; exactly one chunk; two chunks and a tail of 5
        { "q8_0", 37 }, { "q4_0 f32-activations", 21 },
    };

    private static (LlamaForCausalLM Model, DecoderActivations Activations) Build(string kind) => kind switch
    {
        // C = 40, HS = 10, F = 70, GQA 4 -> 2 heads, tied head: every tail of the kernels.
        "f32" => (new LlamaForCausalLM(LlamaTests.Tiny(vocab: 53, hidden: 40, heads: 4, kvHeads: 2, ffn: 70, maxPos: 64), new Generator(31)), DecoderActivations.Float32),
        "q8_0" => (QuantizedCpuDecoderTests.Model(QuantType.Q8_0, tied: true, quantizedEmbedding: true, seed: 32), DecoderActivations.Quantized),
        _ => (QuantizedCpuDecoderTests.Model(QuantType.Q4_0, tied: false, quantizedEmbedding: true, seed: 33), DecoderActivations.Float32),
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void PrefillRowsEqualsStepByStepBitForBit(string kind, int prompt)
    {
        var (model, activations) = Build(kind);
        model.Eval();
        var ids = CpuDecoderTests.Ids(prompt + 4, model.Config.VocabSize, 34);
        using var noGrad = GradMode.NoGrad();
        var rowsCache = model.NewCache(1, ids.Length);
        var stepCache = model.NewCache(1, ids.Length);
        using var rows = CpuDecoder.TryCreate(model, rowsCache, out var why, new SpinPool(2), activations);
        using var steps = CpuDecoder.TryCreate(model, stepCache, out _, new SpinPool(2), activations)!;
        Assert.True(rows is not null, why);
        Assert.True(rows.CanPrefillRows, rows.PrefillRowsUnsupported);
        Assert.False(rows.CanPrefill); // the integer Q4_0 prefill would be chosen first

        var actual = rows.PrefillRows(ids[..prompt]).ToArray();
        float[] expected = [];
        for (int t = 0; t < prompt; t++) expected = steps.Step(ids[t]).ToArray();
        Assert.Equal(prompt, rowsCache.Length);
        Assert.Equal(expected, actual);
        for (int layer = 0; layer < model.Config.NumHiddenLayers; layer++)
        {
            Assert.Equal(stepCache.Keys(layer).ToArray<float>(), rowsCache.Keys(layer).ToArray<float>());
            Assert.Equal(stepCache.Values(layer).ToArray<float>(), rowsCache.Values(layer).ToArray<float>());
        }
        for (int t = prompt; t < ids.Length; t++)
            Assert.Equal(steps.Step(ids[t]).ToArray(), rows.Step(ids[t]).ToArray());
    }

    [Theory]
    [InlineData(3)]  // a decoder of 3 slots: chunks of PrefillRowsChunk (16) rows
    [InlineData(20)] // more slots than that: chunks of 20 rows
    public void PrefillSlotsGivesEachSlotWhatStepByStepGives(int slotCount)
    {
        var (model, activations) = Build("f32");
        model.Eval();
        using var noGrad = GradMode.NoGrad();
        // Prompts of 5, 20 and 9 tokens: 34 rows, so chunks end inside prompts and a chunk ends no prompt.
        int[][] prompts = [CpuDecoderTests.Ids(5, 53, 40), CpuDecoderTests.Ids(20, 53, 41), CpuDecoderTests.Ids(9, 53, 42)];
        int[] slots = [2, 0, 1];
        var caches = Enumerable.Range(0, slotCount).Select(_ => model.NewCache(1, 32)).ToList();
        using var decoder = CpuDecoder.TryCreateSlots(model, caches, out var why, new SpinPool(2), activations);
        Assert.True(decoder is not null, why);
        var logits = new float[3 * 53];
        decoder.PrefillSlots(slots, prompts, logits);
        for (int i = 0; i < 3; i++)
        {
            var cache = model.NewCache(1, 32);
            using var lone = CpuDecoder.TryCreate(model, cache, out _, new SpinPool(2), activations)!;
            float[] expected = [];
            foreach (int id in prompts[i]) expected = lone.Step(id).ToArray();
            Assert.Equal(expected, logits.AsSpan(i * 53, 53).ToArray());
            Assert.Equal(prompts[i].Length, caches[slots[i]].Length);
            for (int layer = 0; layer < model.Config.NumHiddenLayers; layer++)
                Assert.Equal(cache.Keys(layer).ToArray<float>(), caches[slots[i]].Keys(layer).ToArray<float>());
        }
        Assert.Throws<ArgumentException>(() => decoder.PrefillSlots([0, 0], [[1], [2]], new float[2 * 53]));
    }

    [Fact]
    public void GenerationPrefillsByRowsAndMatchesTokenByTokenDecoding()
    {
        var (model, _) = Build("f32");
        model.Eval();
        var prompt = CpuDecoderTests.Ids(20, 53, 35);
        var generated = TextGenerator.Generate(model, prompt, 12, SamplingOptions.Greedy).ToArray();
        // The same greedy decode with every prompt token through Step.
        using var noGrad = GradMode.NoGrad();
        var cache = model.NewCache(1, prompt.Length + 12);
        using var decoder = CpuDecoder.TryCreate(model, cache, out _)!;
        float[] logits = [];
        foreach (int id in prompt) logits = decoder.Step(id).ToArray();
        var expected = new List<int>();
        for (int i = 0; i < 12; i++)
        {
            int next = Array.IndexOf(logits, logits.Max());
            expected.Add(next);
            if (i < 11) logits = decoder.Step(next).ToArray();
        }
        Assert.Equal(expected, generated);
    }

    [Fact]
    public void PrefillRowsIsRefusedWithLoraAdapters()
    {
        var model = new LlamaForCausalLM(LlamaTests.Tiny(vocab: 53, hidden: 40, heads: 4, kvHeads: 2, ffn: 70), new Generator(36));
        var q = (Linear)model.Model.Layers[0].SelfAttn.QProj;
        model.ReplaceModule("model.layers.0.self_attn.q_proj", LoraLinear.Wrap(q, rank: 2, alpha: 4, dropout: 0, new Generator(37)));
        model.Eval();
        using var decoder = CpuDecoder.TryCreate(model, model.NewCache(1, 8), out var why)!;
        Assert.True(decoder is not null, why);
        Assert.False(decoder.CanPrefillRows);
        Assert.Contains("LoRA", decoder.PrefillRowsUnsupported);
        Assert.Contains("does not apply", Assert.Throws<InvalidOperationException>(() => decoder.PrefillRows([1, 2])).Message);
    }
}
