// LoRA on Linear and on the LLaMA model: a fresh adapter (B = 0) changes no logit at all, the forward
// pass equals x W^T + b + (alpha/r) (x A^T) B^T, merging gives the same logits as the unmerged adapter,
// gradients of A, B and x match central finite differences in f64 (on one layer, with and without
// dropout, and through the whole tiny model), and Lora.Apply leaves only lora_A / lora_B trainable.
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Tensors;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Training.Lora;

namespace TinyLlama.Tests.Training;

public class LoraTests
{
    internal static LlamaConfig TinyConfig() => new()
    {
        VocabSize = 37,
        HiddenSize = 16,
        IntermediateSize = 24,
        NumHiddenLayers = 2,
        NumAttentionHeads = 4,
        NumKeyValueHeads = 2,
        MaxPositionEmbeddings = 64,
        RmsNormEps = 1e-5,
    };

    internal static readonly int[] Ids = [1, 5, 9, 2, 30, 7, 7, 11, 3, 36, 0, 4];

    internal static Tensor IdsTensor() => Tensor.FromArray(Ids, [2, 6]);

    internal static LoraConfig AllTargets(int rank = 4, double alpha = 8, double dropout = 0.0) =>
        new(rank, alpha, dropout, ["q", "k", "v", "o", "gate", "up", "down"]);

    internal static float[] Logits(LlamaForCausalLM model)
    {
        using var _ = GradMode.NoGrad();
        return model.Forward(IdsTensor()).ToArray<float>();
    }

    /// <summary>Fills every lora_B (and nudges every lora_A) with seeded noise, as after some training.</summary>
    internal static void RandomiseAdapters(Module model, ulong seed, double std = 0.1)
    {
        var gen = new Generator(seed);
        using var _ = GradMode.NoGrad();
        foreach (var (name, t) in Lora.AdapterStateDict(model))
        {
            var noise = Tensor.RandN(t.Shape, gen, t.DType, t.Device, 0, std);
            if (name.EndsWith(".lora_B.weight", StringComparison.Ordinal)) t.CopyFrom_(noise);
            else t.Add_(noise);
        }
    }

    // ---------------- the model ----------------

    [Fact]
    public void ZeroInitialisedBLeavesLogitsBitForBit()
    {
        var model = new LlamaForCausalLM(TinyConfig(), new Generator(1));
        var baseLogits = Logits(model);
        // Training mode with dropout on the adapter's input: B = 0 must still contribute exactly nothing.
        Lora.Apply(model, AllTargets(dropout: 0.1), new Generator(2));
        var adapters = Lora.AdapterStateDict(model);
        Assert.Equal(2 * 7 * 2, adapters.Count);
        Assert.All(adapters.Where(kv => kv.Key.EndsWith("lora_B.weight", StringComparison.Ordinal)), kv => Assert.All(kv.Value.ToArray<float>(), v => Assert.Equal(0f, v)));
        Assert.All(adapters.Where(kv => kv.Key.EndsWith("lora_A.weight", StringComparison.Ordinal)), kv => Assert.Contains(kv.Value.ToArray<float>(), v => v != 0));
        Assert.Equal(baseLogits, Logits(model));
    }

    [Fact]
    public void AdapterNamesShapesAndInitFollowPeft()
    {
        var cfg = TinyConfig();
        var model = new LlamaForCausalLM(cfg, new Generator(1));
        var adapted = Lora.Apply(model, AllTargets(rank: 3), new Generator(2));
        Assert.Equal(14, adapted.Count);
        var names = model.NamedParameters().Select(p => p.Name).ToHashSet();
        int hs = cfg.HeadDim;
        foreach (int i in new[] { 0, 1 })
        {
            var expected = new (string Module, int In, int Out)[]
            {
                ("self_attn.q_proj", 16, 4 * hs), ("self_attn.k_proj", 16, 2 * hs), ("self_attn.v_proj", 16, 2 * hs), ("self_attn.o_proj", 4 * hs, 16),
                ("mlp.gate_proj", 16, 24), ("mlp.up_proj", 16, 24), ("mlp.down_proj", 24, 16),
            };
            foreach (var (module, fanIn, fanOut) in expected)
            {
                string prefix = $"model.layers.{i}.{module}";
                Assert.Contains(prefix + ".weight", names);
                var state = model.StateDict();
                Assert.Equal([3, fanIn], state[prefix + ".lora_A.weight"].Shape);
                Assert.Equal([fanOut, 3], state[prefix + ".lora_B.weight"].Shape);
                // kaiming_uniform(a = sqrt(5)) on [r, in] is U(-1/sqrt(in), 1/sqrt(in)).
                double bound = 1.0 / Math.Sqrt(fanIn);
                var a = state[prefix + ".lora_A.weight"].ToArray<float>();
                Assert.All(a, v => Assert.InRange(v, -bound, bound));
                Assert.True(a.Max() - a.Min() > bound / 2, $"{prefix}.lora_A.weight does not look uniform on [-{bound}, {bound}]");
            }
        }
        Assert.DoesNotContain(names, n => n.StartsWith("lm_head.lora", StringComparison.Ordinal) || n.Contains("embed_tokens.lora", StringComparison.Ordinal));
    }

    [Fact]
    public void ShortAndPeftTargetNamesSelectTheSameLayers()
    {
        var model = new LlamaForCausalLM(TinyConfig(), new Generator(1));
        var adapted = Lora.Apply(model, new LoraConfig(2, 4, 0, ["q", "v_proj", "gate", "q_proj"]), new Generator(2));
        Assert.Equal(
            ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.gate_proj",
             "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.gate_proj"],
            adapted.Select(a => a.Name));
        Assert.IsNotType<LoraLinear>(model.Model.Layers[0].SelfAttn.KProj);
        Assert.IsType<LoraLinear>(model.Model.Layers[1].Mlp.GateProj);
    }

    [Fact]
    public void BadConfigsAndDoubleApplyAreRejected()
    {
        var model = new LlamaForCausalLM(TinyConfig(), new Generator(1));
        var e = Assert.Throws<ArgumentException>(() => Lora.Apply(model, new LoraConfig(2, 4, 0, ["q", "lm_head"]), new Generator(2)));
        Assert.Contains("lm_head", e.Message);
        Assert.Throws<ArgumentException>(() => Lora.Apply(model, new LoraConfig(0, 4, 0, ["q"]), new Generator(2)));
        Assert.Throws<ArgumentException>(() => Lora.Apply(model, new LoraConfig(2, 4, 1.0, ["q"]), new Generator(2)));
        Assert.Throws<ArgumentException>(() => Lora.Apply(model, new LoraConfig(2, 4, 0, []), new Generator(2)));
        // Nothing was frozen or attached by the failed calls.
        Assert.Empty(Lora.AdaptedLayers(model));
        Assert.All(model.Parameters(), p => Assert.True(p.RequiresGrad));
        Lora.Apply(model, new LoraConfig(2, 4, 0, ["q"]), new Generator(2));
        Assert.Throws<InvalidOperationException>(() => Lora.Apply(model, new LoraConfig(2, 4, 0, ["v"]), new Generator(2)));
    }

    [Fact]
    public void MergedWeightsGiveTheSameLogitsAsTheAdapter()
    {
        var cfg = TinyConfig();
        var model = new LlamaForCausalLM(cfg, new Generator(1));
        var baseNames = model.NamedParameters().Select(p => p.Name).ToList();
        var baseLogits = Logits(model);
        var w0 = model.Model.Layers[1].Mlp.DownProj.Weight.ToArray<double>();
        Lora.Apply(model, AllTargets(rank: 4, alpha: 8, dropout: 0.2), new Generator(2));
        RandomiseAdapters(model, 3);
        model.Eval(); // no dropout: the merged model has none either
        var adapterLogits = Logits(model);
        Assert.True(baseLogits.Zip(adapterLogits).Max(p => Math.Abs(p.First - p.Second)) > 1e-3, "the random adapters should change the logits");

        // The merged weight is W + (alpha / r) B A, checked against a product done here in f64.
        var down = Assert.IsType<LoraLinear>(model.Model.Layers[1].Mlp.DownProj);
        var a = down.LoraA.Weight.ToArray<double>(); // [4, 24]
        var b = down.LoraB.Weight.ToArray<double>(); // [16, 4]
        Assert.Equal(14, Lora.Merge(model));
        Assert.Same(down.Base, model.Model.Layers[1].Mlp.DownProj);
        var merged = down.Base.Weight.ToArray<double>();   // [16, 24]
        for (int o = 0; o < 16; o++)
            for (int i = 0; i < 24; i++)
            {
                double delta = 0;
                for (int r = 0; r < 4; r++) delta += b[o * 4 + r] * a[r * 24 + i];
                Assert.Equal(w0[o * 24 + i] + 2.0 * delta, merged[o * 24 + i], 1e-6);
            }

        // Tolerance: the merged and unmerged forms round differently in f32; logits are O(0.1), so 1e-5
        // absolute is ~100 ulps of headroom.
        var mergedLogits = Logits(model);
        for (int i = 0; i < mergedLogits.Length; i++)
            Assert.True(Math.Abs(mergedLogits[i] - adapterLogits[i]) <= 1e-5, $"logit {i}: merged {mergedLogits[i]} vs adapter {adapterLogits[i]}");
        Assert.Equal(baseNames, model.NamedParameters().Select(p => p.Name).ToList());
        Assert.Empty(Lora.AdaptedLayers(model));
    }

    [Fact]
    public void OnlyAdapterWeightsTrainAndBaseGradsStayNull()
    {
        var model = new LlamaForCausalLM(TinyConfig(), new Generator(1));
        Lora.Apply(model, AllTargets(rank: 2, alpha: 4, dropout: 0.1), new Generator(2));
        RandomiseAdapters(model, 3);
        var trainable = model.NamedParameters().Where(p => p.Value.RequiresGrad).Select(p => p.Name).ToList();
        Assert.Equal(2 * 7 * 2, trainable.Count);
        Assert.All(trainable, n => Assert.Matches(@"^model\.layers\.\d\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.weight$", n));
        Assert.Equal(trainable.Count, Lora.TrainableParameters(model).Count);

        var logits = model.Forward(IdsTensor());
        var targets = Tensor.FromArray(Ids.Select(i => (i * 7 + 3) % 37).ToArray(), [2, 6]);
        Functional.CrossEntropy(logits, targets).Backward();
        foreach (var (name, p) in model.NamedParameters())
        {
            if (name.Contains(".lora_", StringComparison.Ordinal))
                Assert.True(p.Grad is not null && p.Grad.ToArray<float>().Any(v => v != 0), $"{name} got no gradient");
            else
                Assert.True(p.Grad is null, $"frozen {name} got a gradient");
        }
    }

    [Fact]
    public void RemoveRestoresThePlainModel()
    {
        var model = new LlamaForCausalLM(TinyConfig(), new Generator(1));
        var baseLogits = Logits(model);
        var names = model.NamedParameters().Select(p => p.Name).ToList();
        Lora.Apply(model, AllTargets(), new Generator(2));
        RandomiseAdapters(model, 3);
        Assert.NotEqual(baseLogits, Logits(model));
        Assert.Equal(14, Lora.Remove(model));
        Assert.Equal(baseLogits, Logits(model));
        Assert.Equal(names, model.NamedParameters().Select(p => p.Name).ToList());
        // A new adapter can go on again, with another rank.
        Lora.Apply(model, AllTargets(rank: 5), new Generator(4));
        Assert.Equal([5, 16], model.StateDict()["model.layers.0.self_attn.q_proj.lora_A.weight"].Shape);
    }

    [Fact]
    public void GradientThroughTheModelLogitsMatchesFiniteDifferences()
    {
        var model = new LlamaForCausalLM(TinyConfig(), new Generator(1), DType.F64);
        Lora.Apply(model, new LoraConfig(2, 4, 0, ["q", "v"]), new Generator(2));
        RandomiseAdapters(model, 3, std: 0.5);
        const string a = "model.layers.0.self_attn.q_proj.lora_A.weight", b = "model.layers.0.self_attn.q_proj.lora_B.weight";
        var state = model.StateDict();
        GradCheck.Check(xs =>
        {
            model.SetParameter(a, xs[0]);
            model.SetParameter(b, xs[1]);
            return model.Forward(IdsTensor());
        }, [state[a].Detach().Clone(), state[b].Detach().Clone()]);
    }

    [Fact]
    public void GradientThroughTheModelLossMatchesFiniteDifferences()
    {
        var model = new LlamaForCausalLM(TinyConfig(), new Generator(1), DType.F64);
        Lora.Apply(model, new LoraConfig(2, 3, 0, ["down", "o"]), new Generator(2));
        RandomiseAdapters(model, 3, std: 0.5);
        const string a = "model.layers.1.mlp.down_proj.lora_A.weight", b = "model.layers.1.mlp.down_proj.lora_B.weight";
        var targets = Tensor.FromArray(Ids.Select(i => (i * 5 + 1) % 37).ToArray(), [2, 6]);
        var state = model.StateDict();
        GradCheck.Check(xs =>
        {
            model.SetParameter(a, xs[0]);
            model.SetParameter(b, xs[1]);
            return Functional.CrossEntropy(model.Forward(IdsTensor()), targets);
        }, [state[a].Detach().Clone(), state[b].Detach().Clone()]);
    }

    // ---------------- one Linear ----------------

    private static LoraLinear Adapted(int fanIn, int fanOut, int rank, double alpha, double dropout, Generator gen, bool bias = true)
    {
        var lin = LoraLinear.Wrap(new Linear(fanIn, fanOut, bias, new Generator(100), DType.F64), rank, alpha, dropout, gen);
        using var _ = GradMode.NoGrad();
        lin.LoraB.Weight.CopyFrom_(Tensor.RandN([fanOut, rank], new Generator(101), DType.F64));
        return lin;
    }

    [Fact]
    public void ForwardIsBasePlusScaledLowRankProduct()
    {
        const int n = 6, fanIn = 5, fanOut = 4, r = 3;
        const double alpha = 6;
        var lin = Adapted(fanIn, fanOut, r, alpha, 0, new Generator(7));
        Assert.False(lin.Weight.RequiresGrad);
        Assert.False(lin.Bias!.RequiresGrad);
        Assert.Equal(alpha / r, lin.Scaling);
        var x = GradCheck.RandN(8, n, fanIn);
        var y = lin.Forward(x).ToArray<double>();
        var (xs, w, bias, a, b) = (x.ToArray<double>(), lin.Weight.ToArray<double>(), lin.Bias.ToArray<double>(), lin.LoraA.Weight.ToArray<double>(), lin.LoraB.Weight.ToArray<double>());
        for (int row = 0; row < n; row++)
            for (int o = 0; o < fanOut; o++)
            {
                double expected = bias[o];
                for (int i = 0; i < fanIn; i++) expected += xs[row * fanIn + i] * w[o * fanIn + i];
                for (int k = 0; k < r; k++)
                {
                    double h = 0;
                    for (int i = 0; i < fanIn; i++) h += xs[row * fanIn + i] * a[k * fanIn + i];
                    expected += alpha / r * h * b[o * r + k];
                }
                Assert.Equal(expected, y[row * fanOut + o], 1e-12);
            }
    }

    [Fact]
    public void LinearGradientsOfXAAndBMatchFiniteDifferences()
    {
        var lin = Adapted(5, 4, 3, 6, 0, new Generator(7));
        GradCheck.Check(xs =>
        {
            lin.SetParameter("lora_A.weight", xs[1]);
            lin.SetParameter("lora_B.weight", xs[2]);
            return lin.Forward(xs[0]);
        }, [GradCheck.RandN(1, 2, 3, 5), lin.LoraA.Weight.Detach().Clone(), lin.LoraB.Weight.Detach().Clone()]);
        Assert.Null(lin.Weight.Grad);
        Assert.Null(lin.Bias!.Grad);
    }

    [Fact]
    public void LinearGradientsWithDropoutMatchFiniteDifferences()
    {
        var gen = new Generator(7);
        var lin = Adapted(6, 4, 2, 3, 0.5, gen);
        GradCheck.Check(xs =>
        {
            gen.Reseed(55); // the same dropout mask in every evaluation
            lin.SetParameter("lora_A.weight", xs[1]);
            lin.SetParameter("lora_B.weight", xs[2]);
            return lin.Forward(xs[0]);
        }, [GradCheck.RandN(1, 3, 6), lin.LoraA.Weight.Detach().Clone(), lin.LoraB.Weight.Detach().Clone()]);
    }

    [Fact]
    public void AdapterDropoutActsOnlyInTraining()
    {
        var x = GradCheck.RandN(3, 4, 6);
        var plain = Adapted(6, 5, 2, 4, 0, new Generator(7));
        var dropped = Adapted(6, 5, 2, 4, 0.5, new Generator(7)); // same A (same seed), same B
        var expected = plain.Forward(x).ToArray<double>();
        dropped.Eval();
        Assert.Equal(expected, dropped.Forward(x).ToArray<double>());
        dropped.Train();
        Assert.NotEqual(expected, dropped.Forward(x).ToArray<double>());
    }

    [Fact]
    public void WrapperKeepsTheBaseNamesAndMisuseIsRejected()
    {
        var lin = new Linear(5, 4, true, new Generator(1));
        Assert.Equal(["weight", "bias"], lin.NamedParameters().Select(p => p.Name));
        Assert.Throws<ArgumentOutOfRangeException>(() => LoraLinear.Wrap(lin, 0, 1, 0, new Generator(1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => LoraLinear.Wrap(lin, 2, 1, 1.5, new Generator(1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => LoraLinear.Wrap(lin, 2, double.NaN, 0, new Generator(1)));
        Assert.True(lin.Weight.RequiresGrad); // the failed calls froze nothing
        var lora = LoraLinear.Wrap(lin, 2, 1, 0, new Generator(1));
        Assert.Equal(["weight", "bias", "lora_A.weight", "lora_B.weight"], lora.NamedParameters().Select(p => p.Name));
        Assert.Same(lin.Weight, lora.Weight);
        Assert.Same(lin.Bias, lora.Bias);
        Assert.False(lin.Weight.RequiresGrad);
        Assert.Equal((5, 4), (lora.InFeatures, lora.OutFeatures));
        Assert.Throws<InvalidOperationException>(() => LoraLinear.Wrap(lora, 2, 1, 0, new Generator(1)));
        // A weight replaced on the wrapper (as a checkpoint load does) is the base's weight too.
        var w = Tensor.RandN([4, 5], new Generator(2));
        lora.SetParameter("weight", w);
        Assert.Same(w, lin.Weight);
        Assert.Same(lin, lora.Merge());
        Assert.Throws<InvalidOperationException>(() => lora.Merge());
        Assert.Throws<InvalidOperationException>(() => lora.Forward(Tensor.RandN([1, 5], new Generator(3))));
    }

    [Fact]
    public void HalfPrecisionBaseGetsAnF32Adapter()
    {
        var lin = LoraLinear.Wrap(new Linear(8, 6, false, new Generator(1), DType.BF16), 2, 4, 0, new Generator(2));
        Assert.Equal(DType.F32, lin.LoraA.Weight.DType);
        Assert.Equal(DType.F32, lin.LoraB.Weight.DType);
        using (GradMode.NoGrad()) lin.LoraB.Weight.CopyFrom_(Tensor.RandN([6, 2], new Generator(3)));
        var x = Tensor.RandN([3, 8], new Generator(4), DType.BF16);
        var y = lin.Forward(x);
        Assert.Equal(DType.BF16, y.DType);
        var unmerged = y.ToArray<float>();
        var plain = lin.Merge();
        Assert.Equal(DType.BF16, plain.Weight.DType);
        var merged = plain.Forward(x).ToArray<float>();
        // bf16 has 8 bits of mantissa: agreement to a few bf16 ulps of O(1) values.
        for (int i = 0; i < merged.Length; i++) Assert.True(Math.Abs(merged[i] - unmerged[i]) <= 0.05, $"{i}: {merged[i]} vs {unmerged[i]}");
    }
}
