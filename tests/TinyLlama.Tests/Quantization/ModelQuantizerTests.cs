// The whole-model quantizer (src/TinyLlama.Llama/Quantization/ModelQuantizer.cs) on a tiny random LLaMA:
// GPTQ quantizes every linear into Q4_0 blocks that decode close to the original weights, writes the
// dequantized weights back into the model, and for every linear the output error ||W X - Q X|| on the
// inputs it was calibrated on (those the quantized model produces) is no larger than round to nearest's;
// round to nearest gives the reference quantizer's bytes and honours the embedding / head formats; tied
// heads and bad calibration data.
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tests.Model;

namespace TinyLlama.Tests.Quantization;

public class ModelQuantizerTests
{
    // K = 64 (hidden) and 96 (FFN): whole Q4_0 blocks; 4 x 16 calibration tokens, so the FFN's H is singular
    // before dampening.
    private static LlamaConfig Config(bool tied = false) =>
        LlamaTests.Tiny(vocab: 40, hidden: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 96, maxPos: 32) with { TieWordEmbeddings = tied };

    private static List<int[]> Sequences(int count, int length, int vocab, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => Enumerable.Range(0, length).Select(_ => rng.Next(vocab)).ToArray()).ToList();
    }

    private static IEnumerable<(string Name, Linear Linear)> Linears(LlamaForCausalLM model)
    {
        for (int i = 0; i < model.Config.NumHiddenLayers; i++)
        {
            var l = model.Model.Layers[i];
            yield return (LlamaWeightNames.QProj(i), l.SelfAttn.QProj);
            yield return (LlamaWeightNames.KProj(i), l.SelfAttn.KProj);
            yield return (LlamaWeightNames.VProj(i), l.SelfAttn.VProj);
            yield return (LlamaWeightNames.OProj(i), l.SelfAttn.OProj);
            yield return (LlamaWeightNames.GateProj(i), l.Mlp.GateProj);
            yield return (LlamaWeightNames.UpProj(i), l.Mlp.UpProj);
            yield return (LlamaWeightNames.DownProj(i), l.Mlp.DownProj);
        }
        if (model.LmHead is not null) yield return (LlamaWeightNames.LmHead, model.LmHead);
    }

    private static byte[] Bytes(Tensor t) => ((CpuStorage)t.Storage).AsSpan<byte>().ToArray();

    private static float[] Decode(Tensor blocks, QuantType type, int k)
    {
        Assert.Equal(type.Traits().RowBytes(k), blocks.Size(1));
        return GptqTests.Decode(Bytes(blocks), blocks.Size(0), k, type);
    }

    private static double RelativeError(float[] a, float[] b) =>
        Math.Sqrt(a.Zip(b, (x, y) => ((double)x - y) * (x - y)).Sum() / a.Sum(x => (double)x * x));

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void GptqQuantizesEveryLinearAndBeatsRoundToNearestOnItsCalibrationInputs(bool actOrder)
    {
        var model = new LlamaForCausalLM(Config(), new Generator(1));
        var original = model.NamedParameters().ToDictionary(p => p.Name, p => p.Value.ToArray<float>());
        var calibration = Sequences(4, 16, 40, 2);
        var progress = new List<(int, int)>();
        var result = ModelQuantizer.Quantize(model, calibration,
            new ModelQuantizerOptions { ActOrder = actOrder, Head = WeightFormat.Q4_0 }, (i, n) => progress.Add((i, n)));
        Assert.Equal([(1, 3), (2, 3), (3, 3)], progress);
        Assert.Equal(original.Keys, result.Keys);

        // The inputs each linear sees in the quantized model are the ones it was calibrated on.
        var inputs = Linears(model).ToDictionary(l => l.Name, _ => new List<float[]>());
        foreach (var (name, linear) in Linears(model)) linear.InputObserver = x => inputs[name].Add(x.ToArray<float>());
        using (GradMode.NoGrad())
            foreach (var ids in calibration) model.Forward(Tensor.FromArray(ids, [1, ids.Length]));
        foreach (var (_, linear) in Linears(model)) linear.InputObserver = null;

        var report = new List<string>();
        foreach (var (name, linear) in Linears(model))
        {
            int rows = linear.OutFeatures, k = linear.InFeatures;
            var q = result[name];
            Assert.Equal(DType.Q4, q.DType);
            Assert.Equal([rows, k / 32 * 18], q.Shape);
            var w = original[name];
            var gptq = Decode(q, QuantType.Q4_0, k);
            Assert.Equal(gptq, linear.Weight.ToArray<float>());      // the model now holds the dequantized weights
            double rel = RelativeError(gptq, w);
            Assert.True(rel < 0.25, $"{name}: relative weight error {rel:g3}");
            var x = inputs[name].SelectMany(v => v).ToArray();  // [n, k]: every calibration token
            var rtn = GptqTests.Decode(GptqTests.RoundToNearest(w, rows, k, QuantType.Q4_0), rows, k, QuantType.Q4_0);
            double eGptq = GptqTests.OutputError(w, gptq, x, rows, k), eRtn = GptqTests.OutputError(w, rtn, x, rows, k);
            report.Add($"{name}: gptq {eGptq:g3} rtn {eRtn:g3}");
            Assert.True(eGptq <= eRtn, string.Join("; ", report));
        }
        foreach (var name in original.Keys.Where(n => n.EndsWith("norm.weight", StringComparison.Ordinal) || n == LlamaWeightNames.Embedding))
        {
            Assert.Equal(DType.F32, result[name].DType);
            Assert.Equal(original[name], result[name].ToArray<float>());
        }
    }

    [Fact]
    public void RoundToNearestGivesTheReferenceBytesAndTheChosenFormats()
    {
        var model = new LlamaForCausalLM(Config(), new Generator(3));
        var original = model.NamedParameters().ToDictionary(p => p.Name, p => p.Value.ToArray<float>());
        var result = ModelQuantizer.Quantize(model, null,
            new ModelQuantizerOptions { Type = QuantType.Q8_0, Method = QuantMethod.Rtn, Embedding = WeightFormat.F16, Head = WeightFormat.Q4_0 });
        foreach (var (name, linear) in Linears(model))
        {
            int rows = linear.OutFeatures, k = linear.InFeatures;
            var type = name == LlamaWeightNames.LmHead ? QuantType.Q4_0 : QuantType.Q8_0;
            Assert.Equal(type == QuantType.Q4_0 ? DType.Q4 : DType.Q8_0, result[name].DType);
            Assert.Equal([rows, type.Traits().RowBytes(k)], result[name].Shape);
            Assert.Equal(GptqTests.RoundToNearest(original[name], rows, k, type), Bytes(result[name]));
            Assert.Equal(original[name], linear.Weight.ToArray<float>()); // round to nearest leaves the model alone
        }
        var embedding = result[LlamaWeightNames.Embedding];
        Assert.Equal(DType.F16, embedding.DType);
        Assert.Equal(original[LlamaWeightNames.Embedding].Select(v => (Half)v).ToArray(), embedding.ToArray<Half>());
    }

    [Fact]
    public void ConvertKeepsTheSameRuleForFloatTypes()
    {
        // The float path of `quantize --type f16|bf16|f32`: linears in the given float format, the embedding and
        // the head in theirs, the RMSNorm gains in f32, whatever the rest is.
        var model = new LlamaForCausalLM(Config(), new Generator(8));
        var original = model.NamedParameters().ToDictionary(p => p.Name, p => p.Value.ToArray<float>());
        var f16 = ModelQuantizer.Convert(model, WeightFormat.F16, WeightFormat.Q8_0, WeightFormat.F32);
        var bf16 = ModelQuantizer.Convert(model, WeightFormat.BF16, WeightFormat.BF16, WeightFormat.F16);
        Assert.Equal(original.Keys.Order(), f16.Keys.Order());
        foreach (var (name, values) in original)
        {
            if (name == LlamaWeightNames.Embedding)
            {
                Assert.Equal(DType.Q8_0, f16[name].DType);
                var shape = model.Model.EmbedTokens.Weight.Shape;
                Assert.Equal(GptqTests.RoundToNearest(values, shape[0], shape[1], QuantType.Q8_0), Bytes(f16[name]));
                Assert.Equal(DType.BF16, bf16[name].DType);
            }
            else if (name == LlamaWeightNames.LmHead)
            {
                Assert.Equal(values, f16[name].ToArray<float>());
                Assert.Equal(values.Select(v => (Half)v).ToArray(), bf16[name].ToArray<Half>());
            }
            else if (name.EndsWith("norm.weight", StringComparison.Ordinal))
            {
                Assert.Equal(DType.F32, f16[name].DType);
                Assert.Equal(DType.F32, bf16[name].DType);
                Assert.Equal(values, bf16[name].ToArray<float>());
            }
            else
            {
                Assert.Equal(values.Select(v => (Half)v).ToArray(), f16[name].ToArray<Half>());
                Assert.Equal(DType.BF16, bf16[name].DType);
                // bfloat16 keeps the top 16 bits of the float, rounded to nearest even: within 2^-8 relative.
                var got = bf16[name].ToArray<float>();
                for (int i = 0; i < values.Length; i++) Assert.True(Math.Abs(got[i] - values[i]) <= Math.Abs(values[i]) / 256, $"{name}[{i}]");
            }
        }
        Assert.Throws<ArgumentException>(() => ModelQuantizer.Convert(model, WeightFormat.Q4_0, WeightFormat.F32, WeightFormat.F32));
    }

    [Fact]
    public void TiedHeadIsTheEmbeddingAndIsNotCalibrated()
    {
        var model = new LlamaForCausalLM(Config(tied: true), new Generator(4));
        var progress = new List<(int, int)>();
        var result = ModelQuantizer.Quantize(model, Sequences(2, 8, 40, 5),
            new ModelQuantizerOptions { Type = QuantType.Q8_0, Embedding = WeightFormat.Q8_0, Head = WeightFormat.Q4_0 }, (i, n) => progress.Add((i, n)));
        Assert.Equal([(1, 2), (2, 2)], progress);
        Assert.False(result.ContainsKey(LlamaWeightNames.LmHead));
        Assert.Equal(DType.Q8_0, result[LlamaWeightNames.Embedding].DType);
        Assert.Equal(DType.Q8_0, result[LlamaWeightNames.DownProj(1)].DType);
    }

    [Fact]
    public void BadCalibrationIsAOneLineError()
    {
        var model = new LlamaForCausalLM(Config(), new Generator(6));
        Assert.Contains("at least one calibration sequence", Assert.Throws<ArgumentException>(() => ModelQuantizer.Quantize(model, [])).Message);
        Assert.Contains("sequence 1, position 2: token 40 is outside the vocabulary [0, 40)",
            Assert.Throws<ArgumentException>(() => ModelQuantizer.Quantize(model, [[1, 2], [3, 4, 40]])).Message);
        Assert.Contains("sequence 0 has 33 tokens, expected 1 to 32",
            Assert.Throws<ArgumentException>(() => ModelQuantizer.Quantize(model, [new int[33]])).Message);
        Assert.Contains("sequence 0 has 0 tokens", Assert.Throws<ArgumentException>(() => ModelQuantizer.Quantize(model, [Array.Empty<int>()])).Message);
    }
}
