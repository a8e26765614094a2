// A whole LLaMA model on block-quantized weights, through a GGUF file and back: a small random GQA model
// quantized by ModelQuantizer (round to nearest) to q8_0 or q4_0, saved with GgufModel.Save and loaded
// with Checkpoint.Load + LlamaForCausalLM.FromWeights, gives logits bit for bit equal to FromWeights over
// the in-memory quantized weights (QuantizedLinear everywhere a block tensor sits; with a tied embedding in
// blocks, QuantizedEmbedding for the lookup and its Attend for the head). The block model equals the f32
// model over the dequantized weights up to f32 summation order, and its logits are near the original
// model's by the quantization error of the format (bounds and their reasons at the asserts).
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tests.Formats;
using TinyLlama.Tests.Model;

namespace TinyLlama.Tests.Quantization;

public class QuantizedModelTests
{
    private static readonly int[] Ids = [1, 5, 9, 2, 30, 7, 7, 11, 3, 36, 0, 4, 17, 21, 39, 8];

    // hidden 64 and FFN 96 are whole 32-blocks; FFN 80 is not, so down_proj (K = 80) falls back to f16.
    private static LlamaConfig Config(bool tied, int ffn = 96) =>
        LlamaTests.Tiny(vocab: 40, hidden: 64, layers: 2, heads: 4, kvHeads: 2, ffn: ffn, maxPos: 32) with { TieWordEmbeddings = tied };

    private static float[] Logits(LlamaForCausalLM model) => model.Forward(Tensor.FromArray(Ids, [1, Ids.Length])).ToArray<float>();

    private static Dictionary<string, Tensor> QuantizeRtn(LlamaForCausalLM model, QuantType type, WeightFormat table) =>
        ModelQuantizer.Quantize(model, null, new ModelQuantizerOptions { Type = type, Method = QuantMethod.Rtn, Embedding = table, Head = table });

    [Theory]
    [InlineData(QuantType.Q8_0, false, 96)]
    [InlineData(QuantType.Q4_0, false, 96)]
    [InlineData(QuantType.Q4_0, false, 80)]  // down_proj stays f16
    [InlineData(QuantType.Q8_0, true, 96)]   // tied: the embedding in q8_0 is also the head
    [InlineData(QuantType.Q4_0, true, 96)]
    public void GgufRoundTripOfBlockWeightsGivesIdenticalLogits(QuantType type, bool tied, int ffn)
    {
        var config = Config(tied, ffn);
        var source = new LlamaForCausalLM(config, new Generator(11));
        var table = type == QuantType.Q4_0 ? WeightFormat.Q4_0 : WeightFormat.Q8_0;
        var weights = QuantizeRtn(source, type, table);
        var blockType = type == QuantType.Q4_0 ? DType.Q4 : DType.Q8_0;
        Assert.Equal(blockType, weights[LlamaWeightNames.QProj(0)].DType);
        Assert.Equal(ffn % 32 == 0 ? blockType : DType.F16, weights[LlamaWeightNames.DownProj(1)].DType);
        Assert.Equal(blockType, weights[LlamaWeightNames.Embedding].DType);

        using var dir = new TempDir();
        string path = dir.File("m.gguf");
        GgufModel.Save(path, config, weights);
        var (loadedConfig, loaded) = Checkpoint.Load(path);
        Assert.Equal(config, loadedConfig);

        var inMemory = LlamaForCausalLM.FromWeights(config, weights);
        var fromFile = LlamaForCausalLM.FromWeights(loadedConfig, loaded);
        foreach (var model in new[] { inMemory, fromFile })
        {
            // Every block tensor sits in a quantized module under its checkpoint name, used in place.
            Assert.IsType<QuantizedEmbedding>(model.Model.EmbedTokens);
            Assert.IsType<QuantizedLinear>(model.Model.Layers[0].SelfAttn.QProj);
            Assert.Equal(ffn % 32 == 0, model.Model.Layers[1].Mlp.DownProj is QuantizedLinear);
            Assert.Equal(tied, model.LmHead is null);
            if (!tied) Assert.IsType<QuantizedLinear>(model.LmHead);
            var names = model.NamedParameters().ToDictionary(p => p.Name, p => p.Value);
            Assert.Equal(weights.Keys.Order(), names.Keys.Order());
            foreach (var (name, t) in names)
                Assert.Equal(weights[name].DType.IsQuantized() ? weights[name].DType : DType.F32, t.DType);
        }
        Assert.Same(weights[LlamaWeightNames.QProj(0)].Storage, inMemory.Model.Layers[0].SelfAttn.QProj.Weight.Storage);
        Assert.Equal(Logits(inMemory), Logits(fromFile));
    }

    [Theory]
    [InlineData(QuantType.Q8_0, false)]
    [InlineData(QuantType.Q4_0, true)]
    public void BlockModelEqualsTheF32ModelOverTheDequantizedWeights(QuantType type, bool tied)
    {
        var config = Config(tied);
        var weights = QuantizeRtn(new LlamaForCausalLM(config, new Generator(12)), type, type == QuantType.Q4_0 ? WeightFormat.Q4_0 : WeightFormat.Q8_0);
        var dequantized = weights.ToDictionary(kv => kv.Key, kv => kv.Value.DType.IsQuantized() ? Quantize.Dequantize(kv.Value) : kv.Value);
        var blocks = Logits(LlamaForCausalLM.FromWeights(config, weights));
        var floats = Logits(LlamaForCausalLM.FromWeights(config, dequantized));
        // Both multiply f32 activations by the same weight values; only the order of the f32 sums differs
        // (block dot products vs the GEMM's K loop), ~K * 2^-24 relative per product over 2 layers: 1e-4 of
        // the largest logit is ~50x that.
        double scale = floats.Max(Math.Abs);
        for (int i = 0; i < floats.Length; i++)
            Assert.True(Math.Abs(blocks[i] - floats[i]) <= 1e-4 * scale, $"logit {i}: {blocks[i]} vs {floats[i]} over dequantized weights");
    }

    [Theory]
    [InlineData(DType.F64, 1e-6)]
    [InlineData(DType.BF16, 5e-2)]
    public void BlockModelRunsInFromWeightsDtypeWithAQuantizedTiedEmbedding(DType dtype, double tolerance)
    {
        // The norms in dtype, the linears and the tied table in blocks: the table's rows come out in dtype and
        // a bf16 activation is multiplied in f32, so every layer sees one dtype; the KV cache follows.
        var config = Config(tied: true);
        var weights = QuantizeRtn(new LlamaForCausalLM(config, new Generator(14)), QuantType.Q4_0, WeightFormat.Q8_0);
        var f32 = Logits(LlamaForCausalLM.FromWeights(config, weights));
        var model = LlamaForCausalLM.FromWeights(config, weights, dtype);
        var full = model.Forward(Tensor.FromArray(Ids, [1, Ids.Length]));
        Assert.Equal(dtype, full.DType);
        // f64: the f32 model's logits to f32 rounding (1e-6 of the largest); bf16: a few roundings of 2^-8
        // per layer (5e-2 of the largest).
        double[] got = full.ToArray<double>();
        double scale = f32.Max(Math.Abs);
        for (int i = 0; i < f32.Length; i++)
            Assert.True(Math.Abs(got[i] - f32[i]) <= tolerance * scale, $"{dtype} logit {i}: {got[i]} vs f32 {f32[i]}");
        if (dtype != DType.F64) return; // (a half model's KV cache is f32, a limit of half models, not of blocks)
        // The cache is f64 too: the cached last step equals the full pass's last position.
        var cache = model.NewCache();
        model.Forward(Tensor.FromArray(Ids[..^1], [1, Ids.Length - 1]), cache);
        var lastRow = model.Forward(Tensor.FromArray(Ids[^1..], [1, 1]), cache).ToArray<double>();
        for (int v = 0; v < config.VocabSize; v++)
            Assert.True(Math.Abs(lastRow[v] - got[(Ids.Length - 1) * config.VocabSize + v]) <= 1e-12 * scale, $"cached logit {v}");
    }

    [Fact]
    public void Q8_0LogitsAreCloseToTheF32ModelsAndCloserThanQ4_0()
    {
        var config = Config(tied: false);
        var model = new LlamaForCausalLM(config, new Generator(13));
        var reference = Logits(model);
        double Error(QuantType type, WeightFormat table)
        {
            var q = Logits(LlamaForCausalLM.FromWeights(config, QuantizeRtn(model, type, table)));
            double num = 0, den = 0;
            for (int i = 0; i < q.Length; i++)
            {
                num += ((double)q[i] - reference[i]) * (q[i] - reference[i]);
                den += (double)reference[i] * reference[i];
            }
            return Math.Sqrt(num / den);
        }
        double q8 = Error(QuantType.Q8_0, WeightFormat.Q8_0), q4 = Error(QuantType.Q4_0, WeightFormat.Q4_0);
        // Q8_0 rounds each weight to a step of amax/127 per 32-block, a uniform error of step/sqrt(12): for
        // these weights (uniform linears, amax ~ their bound; Gaussian tables, amax ~ 2.1 sigma) that is
        // 0.4-0.5% of a weight's RMS. Independent weight errors add in quadrature, so each matrix adds ~0.5%
        // relative error to its output, and the ~8 products between the tokens and a logit (embedding, q/k/v,
        // o, gate/up, down in each of 2 layers, head) give ~sqrt(8) * 0.5% = 1.4%; 3% RMS relative is twice
        // that (observed: ~1.0%). Q4_0's step is amax/8, 16x coarser, so its error must be several times
        // larger (observed ~16x).
        Assert.True(q8 < 0.03, $"q8_0 logits differ from f32 by {q8:P3} (RMS relative)");
        Assert.True(q4 > 4 * q8, $"q4_0 error {q4:P3} should be well above q8_0's {q8:P3}");
    }
}
