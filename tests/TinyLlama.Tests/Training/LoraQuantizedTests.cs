// QLoRA's setting in this engine: LoRA adapters (NN/LoraLinear.cs) over a frozen Q4_0 base
// (NN/QuantizedLinear.cs). The product with blocks takes f64 x (Functional.LinearQuantized), so with f64
// adapters the gradients of x, A and B are checked against central finite differences in f64, on one layer
// and through a whole q4_0 model's loss; the default f32 adapters get the same gradients to f32 precision.
// AdamW steps move only A and B (the base's bytes stay bit for bit), and the adapter saved in PEFT's layout
// loads by the same names on the q4_0 base (same logits), on the dequantized f32 base (the same function up
// to summation order) and on the original f32 model.
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Optim;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tests.Formats;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Tests.Model;
using TinyLlama.Training.Lora;

namespace TinyLlama.Tests.Training;

public class LoraQuantizedTests
{
    private const int N = 4, In = 64, Out = 5, R = 3;
    private const double Alpha = 6, S = Alpha / R;

    private static readonly int[] Ids = [1, 5, 9, 2, 30, 7, 7, 11, 3, 36, 0, 4];

    /// <summary>A Q4_0 layer [Out, In] with an f32 bias and an adapter whose B is seeded noise (a fresh B is zero).</summary>
    private static LoraLinear AdaptedQ4(ulong seed)
    {
        var blocks = Quantize.Q4_0(Tensor.RandN([Out, In], new Generator(seed), DType.F32));
        var lin = LoraLinear.Wrap(new QuantizedLinear(blocks, Tensor.RandN([Out], new Generator(seed + 1), DType.F32)), R, Alpha, 0, new Generator(seed + 2));
        using var _ = GradMode.NoGrad();
        lin.LoraB.Weight.CopyFrom_(Tensor.RandN(lin.LoraB.Weight.Shape, new Generator(seed + 3), DType.F32, Device.Cpu, 0, 0.5));
        return lin;
    }

    private static Tensor F64(Tensor t) => t.Detach().To(DType.F64);

    [Fact]
    public void OneLayerForwardIsTheF64FormulaAndGradientsMatchFiniteDifferences()
    {
        var lin = AdaptedQ4(1);
        Assert.IsType<QuantizedLinear>(lin.Base);
        Assert.Equal(DType.F32, lin.LoraA.Weight.DType); // the adapter over a quantized base is f32, as PEFT's
        var x = GradCheck.RandN(2, N, In);
        var a = F64(lin.LoraA.Weight);
        var b = F64(lin.LoraB.Weight);

        // The forward in f64 with f64 adapters is y = x deq(W)^T + bias + s (x A^T) B^T, written out here.
        double[] w = Quantize.Dequantize(lin.Weight, DType.F64).ToArray<double>(), bias = lin.Bias!.ToArray<double>();
        double[] xs = x.ToArray<double>(), av = a.ToArray<double>(), bv = b.ToArray<double>();
        lin.SetParameter("lora_A.weight", a);
        lin.SetParameter("lora_B.weight", b);
        var y = lin.Forward(x);
        Assert.Equal(DType.F64, y.DType);
        var yv = y.ToArray<double>();
        for (int n = 0; n < N; n++)
            for (int o = 0; o < Out; o++)
            {
                double expected = bias[o];
                for (int i = 0; i < In; i++) expected += xs[n * In + i] * w[o * In + i];
                for (int k = 0; k < R; k++)
                {
                    double h = 0;
                    for (int i = 0; i < In; i++) h += xs[n * In + i] * av[k * In + i];
                    expected += S * h * bv[o * R + k];
                }
                // f64 sums of 64 + 3 * 64 terms of size O(1): 1e-12 is ~1000 f64 ulps.
                Assert.True(Math.Abs(yv[n * Out + o] - expected) <= 1e-12 * (1 + Math.Abs(expected)), $"y[{n},{o}] = {yv[n * Out + o]} vs {expected}");
            }

        // dx (through the blocks and the adapter), dA and dB: central differences in f64.
        GradCheck.Check(v =>
        {
            lin.SetParameter("lora_A.weight", v[1]);
            lin.SetParameter("lora_B.weight", v[2]);
            return lin.Forward(v[0]);
        }, [x, a, b]);
        Assert.Null(lin.Weight.Grad);
        Assert.Null(lin.Bias.Grad);
    }

    [Fact]
    public void DefaultF32AdapterGetsTheF64GradientsToF32Precision()
    {
        var reference = AdaptedQ4(5);
        var lin = AdaptedQ4(5);
        var x = Tensor.RandN([N, In], new Generator(9), DType.F32);
        var dy = Tensor.RandN([N, Out], new Generator(10), DType.F32);
        lin.Forward(x).Backward(dy);

        reference.SetParameter("lora_A.weight", F64(reference.LoraA.Weight).RequiresGrad_());
        reference.SetParameter("lora_B.weight", F64(reference.LoraB.Weight).RequiresGrad_());
        reference.Forward(F64(x)).Backward(F64(dy));
        // f32 products of exact inputs, sums of <= 64 terms of size O(1): 1e-5 relative plus 1e-5 absolute
        // is ~100 f32 ulps.
        foreach (var (what, got, want) in new[] { ("dA", lin.LoraA.Weight.Grad!, reference.LoraA.Weight.Grad!), ("dB", lin.LoraB.Weight.Grad!, reference.LoraB.Weight.Grad!) })
        {
            double[] g = got.ToArray<double>(), r = want.ToArray<double>();
            for (int i = 0; i < r.Length; i++)
                Assert.True(Math.Abs(g[i] - r[i]) <= 1e-5 * (1 + Math.Abs(r[i])), $"{what}[{i}]: f32 {g[i]} vs f64 {r[i]}");
        }
    }

    // hidden 64 and FFN 96: every weight is whole Q4_0 blocks.
    private static LlamaConfig Config() => LlamaTests.Tiny(vocab: 40, hidden: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 96, maxPos: 32);

    // As `tinyllama quantize --type q4_0` writes them: the linears in Q4_0, the embedding and head in Q8_0.
    private static Dictionary<string, Tensor> Q4Weights(LlamaForCausalLM model) =>
        ModelQuantizer.Quantize(model, null, new ModelQuantizerOptions { Type = QuantType.Q4_0, Method = QuantMethod.Rtn, Embedding = WeightFormat.Q8_0, Head = WeightFormat.Q8_0 });

    private static Tensor IdsTensor() => Tensor.FromArray(Ids, [2, 6]);

    private static Tensor Targets() => Tensor.FromArray(Ids.Select(i => (i * 7 + 3) % 40).ToArray(), [2, 6]);

    private static float[] Logits(LlamaForCausalLM model)
    {
        using var _ = GradMode.NoGrad();
        return model.Forward(IdsTensor()).ToArray<float>();
    }

    [Fact]
    public void GradientThroughAQ4_0ModelsLossMatchesFiniteDifferences()
    {
        // The norms in f64 (FromWeights' dtype), every matrix in blocks (the table's rows come out in f64), f64 adapters.
        var model = LlamaForCausalLM.FromWeights(Config(), Q4Weights(new LlamaForCausalLM(Config(), new Generator(1))), DType.F64);
        Lora.Apply(model, new LoraConfig(2, 4, 0, ["v", "down"]), new Generator(2));
        Assert.IsType<QuantizedLinear>(((LoraLinear)model.Model.Layers[1].Mlp.DownProj).Base);
        const string a = "model.layers.1.mlp.down_proj.lora_A.weight", b = "model.layers.0.self_attn.v_proj.lora_B.weight";
        var state = model.StateDict();
        var gen = new Generator(3);
        foreach (var (name, t) in state.Where(kv => kv.Key.Contains(".lora_", StringComparison.Ordinal)))
            model.SetParameter(name, Tensor.RandN(t.Shape, gen, DType.F64, Device.Cpu, 0, 0.3));
        state = model.StateDict();
        GradCheck.Check(xs =>
        {
            model.SetParameter(a, xs[0]);
            model.SetParameter(b, xs[1]);
            return Functional.CrossEntropy(model.Forward(IdsTensor()), Targets());
        }, [state[a].Detach().Clone(), state[b].Detach().Clone()]);
    }

    [Fact]
    public void AdamWMovesOnlyTheAdapterAndItLoadsOnTheQ4AndF32Bases()
    {
        var config = Config();
        var original = new LlamaForCausalLM(config, new Generator(1));
        var q4 = Q4Weights(original);
        var model = LlamaForCausalLM.FromWeights(config, q4);
        var lora = LoraTests.AllTargets(rank: 4, alpha: 8);
        var adapted = Lora.Apply(model, lora, new Generator(2));
        Assert.All(adapted, l => Assert.IsType<QuantizedLinear>(l.Layer.Base));
        var before = model.NamedParameters().ToDictionary(p => p.Name, p => Bytes(p.Value));

        var optimizer = new AdamW(Lora.TrainableParameters(model), lr: 1e-2, weightDecay: 0.1);
        var losses = new List<float>();
        for (int step = 0; step < 4; step++)
        {
            optimizer.ZeroGrad();
            var loss = Functional.CrossEntropy(model.Forward(IdsTensor()), Targets());
            losses.Add((float)loss.Item());
            loss.Backward();
            optimizer.Step();
        }
        Assert.True(losses[^1] < losses[0], $"loss went {losses[0]} -> {losses[^1]}");
        foreach (var (name, p) in model.NamedParameters())
        {
            if (name.Contains(".lora_", StringComparison.Ordinal)) Assert.False(before[name].AsSpan().SequenceEqual(Bytes(p)), $"{name} did not move");
            else Assert.True(before[name].AsSpan().SequenceEqual(Bytes(p)), $"frozen {name} changed");
        }
        Assert.True(TensorFileIO.BlockBytes(q4[LlamaWeightNames.UpProj(1)]).SequenceEqual(TensorFileIO.BlockBytes(model.StateDict()[LlamaWeightNames.UpProj(1)])));

        using var dir = new TempDir();
        PeftAdapter.Save(dir.Path, model, lora, "base.q4_0.gguf");
        var trained = Logits(model);
        var names = model.NamedParameters().Select(p => p.Name).ToList();
        var adapter = Lora.AdapterStateDict(model);

        // On a fresh q4_0 base: the same model, bit for bit.
        var onQ4 = LlamaForCausalLM.FromWeights(config, q4);
        PeftAdapter.Load(dir.Path, onQ4);
        Assert.Equal(trained, Logits(onQ4));

        // On the dequantized f32 base: the same names and function; only f32 summation order differs
        // (~K 2^-24 relative per product): 1e-4 of the largest logit.
        var dequantized = LlamaForCausalLM.FromWeights(config, q4.ToDictionary(kv => kv.Key, kv => kv.Value.DType.IsQuantized() ? Quantize.Dequantize(kv.Value) : kv.Value));
        PeftAdapter.Load(dir.Path, dequantized);
        Assert.Equal(names, dequantized.NamedParameters().Select(p => p.Name).ToList());
        var floats = Logits(dequantized);
        double scale = floats.Max(Math.Abs);
        for (int i = 0; i < floats.Length; i++)
            Assert.True(Math.Abs(trained[i] - floats[i]) <= 1e-4 * scale, $"logit {i}: {trained[i]} on q4_0 vs {floats[i]} on the dequantized base");

        // On the original f32 model: the same names, the adapter's values exactly.
        PeftAdapter.Load(dir.Path, original);
        Assert.Equal(names, original.NamedParameters().Select(p => p.Name).ToList());
        foreach (var (name, t) in Lora.AdapterStateDict(original)) FormatTestUtil.AssertBitEqual(adapter[name], t, name);
    }

    private static byte[] Bytes(Tensor t) => t.DType.IsQuantized() ? TensorFileIO.BlockBytes(t).ToArray() : FormatTestUtil.RawBytes(t);
}
