// BatchedDecoder: several sequences decoding together must each get exactly the logits the module path gives
// that sequence alone, one token at a time (TextGenerator.ModuleForward on its own cache): the batch's
// products run per row as a lone token's do (BatchedDecoder's file header), so equality is bit for bit, with
// requests joining at different steps, prompts of different lengths and more slots than one product's rows
// (chunks of RowsPerProduct). Checked on a random f32 GQA model, on Q4_0 and Q8_0 weights with both kinds of
// activations, and on stories260K from ../shared/reference when present.
using TinyLlama.Backends.Cpu;
using TinyLlama.Formats;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tests.Generation;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Tests.Model;

namespace TinyLlama.Tests.Serving;

public class BatchedDecoderTests
{
    [Fact]
    public void RowsPerProductIsTheSmallMGemmLimit() => Assert.Equal(Gemm.SmallMMax, BatchedDecoder.RowsPerProduct);

    private static LlamaForCausalLM Tiny()
    {
        var model = new LlamaForCausalLM(LlamaTests.Tiny(vocab: 260, hidden: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 40, maxPos: 64), new Generator(5));
        model.Eval();
        return model;
    }

    [Fact]
    public void F32BatchEqualsEachSequenceAloneBitForBit() => AssertBatchEqualsAlone(Tiny(), DecoderActivations.Float32, slots: 6, steps: 12);

    [Theory]
    [InlineData(QuantType.Q4_0, DecoderActivations.Quantized)]
    [InlineData(QuantType.Q4_0, DecoderActivations.Float32)]
    [InlineData(QuantType.Q8_0, DecoderActivations.Quantized)]
    public void QuantizedBatchEqualsEachSequenceAloneBitForBit(QuantType type, DecoderActivations activations) =>
        AssertBatchEqualsAlone(QuantizedCpuDecoderTests.Model(type, tied: false, quantizedEmbedding: true, seed: 3), activations, slots: 5, steps: 6);

    [SkippableFact]
    public void Stories260KBatchEqualsEachSequenceAlone()
    {
        var ckpt = Checkpoint.Load(SharedData.Require("stories260K/stories260K.bin"));
        var model = LlamaForCausalLM.FromWeights(ckpt.Config, ckpt.Weights);
        model.Eval();
        AssertBatchEqualsAlone(model, DecoderActivations.Float32, slots: 5, steps: 16);
    }

    // Request r (prompt of 1 + 2r tokens) joins at step r; every active request then decodes greedily in one
    // batched step. Each request's logits at every step must equal its lone module-path run exactly.
    private static void AssertBatchEqualsAlone(LlamaForCausalLM model, DecoderActivations activations, int slots, int steps)
    {
        int vocab = model.Config.VocabSize, ctx = 48;
        var gen = new Generator(17);
        var prompts = Enumerable.Range(0, slots).Select(r => Enumerable.Range(0, 1 + 2 * r).Select(_ => 1 + (int)(gen.NextDouble() * (vocab - 1))).ToArray()).ToArray();
        var decoder = new BatchedDecoder(model, slots, ctx, activations);
        var batched = prompts.Select(_ => new List<float[]>()).ToArray();
        var next = new int[slots];
        var logits = new float[slots * vocab];
        for (int step = 0; step < steps; step++)
        {
            var active = Enumerable.Range(0, Math.Min(step, slots)).Where(r => batched[r].Count > 0).ToArray();
            decoder.Step(active, active.Select(r => next[r]).ToArray(), logits);
            for (int i = 0; i < active.Length; i++)
            {
                int r = active[i];
                batched[r].Add(logits.AsSpan(i * vocab, vocab).ToArray());
                next[r] = Argmax(batched[r][^1]);
            }
            if (step < slots)
            {
                // Request `step` joins: prefilled alone into its slot, its first token sampled.
                batched[step].Add(decoder.Prefill(step, prompts[step]));
                next[step] = Argmax(batched[step][^1]);
            }
        }
        Assert.Contains(batched, b => b.Count > 4); // steps ran with several slots in more than one chunk

        for (int r = 0; r < slots; r++)
        {
            var cache = model.NewCache(1, ctx);
            float[] alone = TextGenerator.ModuleForward(model, prompts[r], cache, activations);
            for (int s = 0; s < batched[r].Count; s++)
            {
                Assert.True(alone.AsSpan().SequenceEqual(batched[r][s]), $"request {r}, step {s}: batched logits differ from the lone run (max |diff| {MaxDiff(alone, batched[r][s])})");
                alone = TextGenerator.ModuleForward(model, [Argmax(alone)], cache, activations);
            }
            Assert.Equal(prompts[r].Length + batched[r].Count - 1, decoder.Length(r));
        }
    }

    [Fact]
    public void BadStepsAreRefusedWithOneLine()
    {
        var decoder = new BatchedDecoder(Tiny(), 2, 4);
        var logits = new float[2 * 260];
        Assert.Contains("appears twice", Assert.Throws<ArgumentException>(() => decoder.Step([0, 0], [1, 1], logits)).Message);
        Assert.Contains("out of range", Assert.Throws<ArgumentException>(() => decoder.Step([0], [999], logits)).Message);
        Assert.Contains("context size of 4", Assert.Throws<ArgumentException>(() => decoder.Prefill(1, [1, 2, 3, 4, 5])).Message);
        decoder.Prefill(0, [1, 2, 3, 4]);
        Assert.Contains("full", Assert.Throws<InvalidOperationException>(() => decoder.Step([0], [1], logits)).Message);
        Assert.Throws<ArgumentException>(() => new BatchedDecoder(Tiny(), 0, 4));
    }

    private static int Argmax(float[] x) => System.Numerics.Tensors.TensorPrimitives.IndexOfMax(x);

    private static float MaxDiff(float[] a, float[] b) => a.Zip(b, (x, y) => MathF.Abs(x - y)).Max();
}
