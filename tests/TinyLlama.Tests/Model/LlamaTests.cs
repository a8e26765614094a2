// The LLaMA model: KV-cache decoding equals the full forward, and the gradient of the whole model
// (every parameter) matches central finite differences in f64 on a tiny config.
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Model;

public class LlamaTests
{
    internal static LlamaConfig Tiny(int vocab = 37, int hidden = 16, int layers = 2, int heads = 4, int kvHeads = 2, int ffn = 24, int maxPos = 64) => new()
    {
        VocabSize = vocab,
        HiddenSize = hidden,
        IntermediateSize = ffn,
        NumHiddenLayers = layers,
        NumAttentionHeads = heads,
        NumKeyValueHeads = kvHeads,
        HeadDim = hidden / heads,
        MaxPositionEmbeddings = maxPos,
        RmsNormEps = 1e-5,
        RopeTheta = 10000,
    };

    /// <summary>
    /// The dtype axis of the model tests: every dtype a model can be built or loaded in, with the tolerance its
    /// logits are compared at (relative to 1 + |logit|). 16-bit models round every activation to 8 (bf16) or
    /// 11 (f16) significant bits, and the cached and full forwards round in different places.
    /// </summary>
    public static TheoryData<DType, double> ModelDTypes => new()
    {
        { DType.F32, 1e-5 },
        { DType.F64, 1e-12 },
        { DType.F16, 5e-3 },
        { DType.BF16, 4e-2 },
    };

    [Theory]
    [MemberData(nameof(ModelDTypes))]
    public void KvCacheDecodeEqualsFullForward(DType dtype, double tolerance)
    {
        var model = new LlamaForCausalLM(Tiny(), new Generator(1), dtype);
        int[] ids = [1, 5, 9, 2, 30, 7, 7, 11, 3, 36, 0, 4];
        using var _ = GradMode.NoGrad();
        var full = Logits(model.Forward(Tensor.FromArray(ids, [1, ids.Length]))); // (1, T, V)
        var cache = model.NewCache(1, 32);
        int v = model.Config.VocabSize;
        // Prefill 5 tokens, then one token at a time.
        var prefill = Logits(model.Forward(Tensor.FromArray(ids[..5], [1, 5]), cache));
        for (int i = 0; i < 5 * v; i++) AssertLogit(full[i], prefill[i], tolerance, $"prefill {i / v} logit {i % v}");
        for (int t = 5; t < ids.Length; t++)
        {
            var step = Logits(model.Forward(Tensor.FromArray(new[] { ids[t] }, [1, 1]), cache));
            for (int j = 0; j < v; j++) AssertLogit(full[t * v + j], step[j], tolerance, $"position {t} logit {j}");
        }
        Assert.Equal(ids.Length, cache.Length);
        // lastOnly gives the last row of the full forward.
        var last = Logits(model.Forward(Tensor.FromArray(ids, [1, ids.Length]), lastOnly: true));
        for (int j = 0; j < v; j++) AssertLogit(full[(ids.Length - 1) * v + j], last[j], tolerance, $"lastOnly logit {j}");
    }

    /// <summary>
    /// TextGenerator on a model of every dtype (a library user's bf16 or f16 model gets ids, not a dtype error), on
    /// the modules and, where it applies, the CPU decoder: each greedy id is the argmax, within the dtype's tolerance,
    /// of the full forward over the sequence so far.
    /// </summary>
    [Theory]
    [MemberData(nameof(ModelDTypes))]
    public void GreedyGenerationPicksTheFullForwardsArgmax(DType dtype, double tolerance)
    {
        var model = new LlamaForCausalLM(Tiny(), new Generator(5), dtype);
        using (GradMode.NoGrad())   // larger weights than the init, so the logits are not all near zero
            foreach (var p in model.Parameters()) p.CopyFrom_(Tensor.RandN(p.Shape, new Generator(6), DType.F32, null, 0, 0.3).To(dtype));
        int[] prompt = [1, 5, 9, 2];
        foreach (bool decoder in new[] { true, false })
        {
            var generated = TinyLlama.Generation.TextGenerator.Generate(model, prompt, 6, TinyLlama.Generation.SamplingOptions.Greedy, useCpuDecoder: decoder).ToList();
            Assert.Equal(6, generated.Count);
            var sequence = new List<int>(prompt);
            foreach (int id in generated)
            {
                double[] logits;
                using (GradMode.NoGrad())
                    logits = Logits(model.Forward(Tensor.FromArray(sequence.ToArray(), [1, sequence.Count]), lastOnly: true));
                double best = logits.Max();
                Assert.True(logits[id] >= best - tolerance * (1 + Math.Abs(best)),
                    $"{dtype.Name()} (decoder {decoder}): after {sequence.Count} tokens generated {id} (logit {logits[id]}), the argmax's logit is {best}");
                sequence.Add(id);
            }
        }
    }

    private static double[] Logits(Tensor logits) => logits.To(DType.F64).ToArray<double>();

    private static void AssertLogit(double expected, double actual, double tolerance, string what) =>
        Assert.True(Math.Abs(expected - actual) <= tolerance * (1 + Math.Abs(expected)), $"{what}: {actual} vs {expected}");

    [Fact]
    public void BatchedForwardEqualsPerSequenceForward()
    {
        var model = new LlamaForCausalLM(Tiny(), new Generator(2));
        int[] a = [1, 2, 3, 4, 5], b = [9, 8, 7, 6, 5];
        using var _ = GradMode.NoGrad();
        var both = model.Forward(Tensor.FromArray(a.Concat(b).ToArray(), [2, 5])).ToArray<float>();
        var only = model.Forward(Tensor.FromArray(b, [1, 5])).ToArray<float>();
        for (int i = 0; i < only.Length; i++) Assert.Equal(only[i], both[only.Length + i], 5);
    }

    [Fact]
    public void WholeModelGradientMatchesFiniteDifferences()
    {
        // Tiny f64 model: vocab 11, C 8, 2 layers, 2 heads / 1 kv head, FFN 12; every parameter checked.
        var cfg = Tiny(vocab: 11, hidden: 8, layers: 2, heads: 2, kvHeads: 1, ffn: 12, maxPos: 16);
        var model = new LlamaForCausalLM(cfg, new Generator(3), DType.F64);
        // Larger weights than the 0.02 init so the check exercises non-trivial attention patterns.
        using (GradMode.NoGrad())
            foreach (var p in model.Parameters()) p.CopyFrom_(Tensor.RandN(p.Shape, new Generator(4), DType.F64, null, 0, 0.5));
        var names = model.NamedParameters().Select(p => p.Name).ToArray();
        var values = model.NamedParameters().Select(p => p.Value.Detach().Clone()).ToArray();
        var ids = Tensor.FromArray(new[] { 1, 4, 7, 2, 9, 3 }, [1, 6]);
        var targets = Tensor.FromArray(new[] { 4, 7, 2, 9, 3, 10 }, [1, 6]);
        GradCheck.Check(ps =>
        {
            for (int i = 0; i < ps.Length; i++) model.SetParameter(names[i], ps[i]);
            var logits = model.Forward(ids);
            return Functional.CrossEntropy(logits, targets).Reshape(1);
        }, values, atol: 1e-7, rtol: 1e-5);
    }

    [Fact]
    public void ParameterNamesMatchHuggingFace()
    {
        var names = new LlamaForCausalLM(Tiny(layers: 1)).NamedParameters().Select(p => p.Name).ToHashSet();
        string[] expected =
        [
            "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
        ];
        Assert.Equal(expected.ToHashSet(), names);
        var tied = new LlamaForCausalLM(Tiny(layers: 1) with { TieWordEmbeddings = true });
        Assert.DoesNotContain("lm_head.weight", tied.NamedParameters().Select(p => p.Name));
    }
}
