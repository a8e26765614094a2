// BatchedDecoder: several sequences decoding together must each get exactly the logits the same path gives that
// sequence alone, one token at a time: on the CPU decoder path (CpuDecoder.Batch.cs) a lone CpuDecoder (prefilled as
// TextGenerator.Forward prefills), on the module path TextGenerator.ModuleForward on its own cache. Both paths compute
// each row the same way whatever shares its step, so equality is bit for bit, with requests of different prompt
// lengths joining at different steps, leaving at different steps, and new requests reusing the freed slots (so steps
// have 1 to S rows: the CPU kernel's three-row passes and their remainders, the module path's chunks of
// RowsPerProduct). Checked on a random f32 GQA model, on Q4_0 and Q8_0 weights with both kinds of activations, and on
// stories260K from ../shared/reference when present; and the f32 multi-row kernel against an f64 reference.
using TinyLlama.Autograd;
using TinyLlama.Backends.Cpu;
using TinyLlama.Formats;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.NN;
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

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void F32BatchEqualsEachSequenceAloneBitForBit(bool useCpuDecoder) =>
        AssertBatchEqualsAlone(Tiny(), DecoderActivations.Float32, useCpuDecoder, slots: 5, requests: 9);

    [Theory]
    [InlineData(QuantType.Q4_0, DecoderActivations.Quantized, true)]
    [InlineData(QuantType.Q4_0, DecoderActivations.Float32, true)]
    [InlineData(QuantType.Q8_0, DecoderActivations.Quantized, true)]
    [InlineData(QuantType.Q4_0, DecoderActivations.Quantized, false)]
    [InlineData(QuantType.Q8_0, DecoderActivations.Quantized, false)]
    public void QuantizedBatchEqualsEachSequenceAloneBitForBit(QuantType type, DecoderActivations activations, bool useCpuDecoder) =>
        AssertBatchEqualsAlone(QuantizedCpuDecoderTests.Model(type, tied: false, quantizedEmbedding: true, seed: 3), activations, useCpuDecoder, slots: 4, requests: 6);

    [SkippableTheory]
    [InlineData(true)]
    [InlineData(false)]
    public void Stories260KBatchEqualsEachSequenceAlone(bool useCpuDecoder)
    {
        var ckpt = Checkpoint.Load(SharedData.Require("stories260K/stories260K.bin"));
        var model = LlamaForCausalLM.FromWeights(ckpt.Config, ckpt.Weights);
        model.Eval();
        AssertBatchEqualsAlone(model, DecoderActivations.Float32, useCpuDecoder, slots: 5, requests: 8);
    }

    // Request r (a prompt of 1 + 3r mod 7 tokens, decoding 3 + 5r mod 8 tokens) waits from step r / 2; at each step,
    // as BatchScheduler does, requests that have all their tokens leave, the active ones decode greedily in one
    // batched step, and waiting ones take free slots (Reset, Prefill). Each request's logits at every step must equal
    // its lone run on the same path exactly.
    private static void AssertBatchEqualsAlone(LlamaForCausalLM model, DecoderActivations activations, bool useCpuDecoder, int slots, int requests)
    {
        int vocab = model.Config.VocabSize, ctx = 40;
        var gen = new Generator(17);
        var prompts = Enumerable.Range(0, requests).Select(r => Enumerable.Range(0, 1 + 3 * r % 7).Select(_ => 1 + (int)(gen.NextDouble() * (vocab - 1))).ToArray()).ToArray();
        int[] budget = [.. Enumerable.Range(0, requests).Select(r => 3 + 5 * r % 8)];
        using var decoder = new BatchedDecoder(model, slots, ctx, activations, useCpuDecoder);
        Assert.Equal(useCpuDecoder, decoder.UsesCpuDecoder);
        var produced = prompts.Select(_ => new List<float[]>()).ToArray();
        var slotOf = Enumerable.Repeat(-1, requests).ToArray();
        var holder = Enumerable.Repeat(-1, slots).ToArray();
        var next = new int[requests];
        var logits = new float[slots * vocab];
        int joined = 0, widest = 0, reused = 0;
        for (int step = 0; joined < requests || holder.Any(h => h >= 0); step++)
        {
            Assert.True(step < 200, "the schedule did not finish");
            for (int s = 0; s < slots; s++)
                if (holder[s] >= 0 && produced[holder[s]].Count == budget[holder[s]]) holder[s] = -1;
            var active = holder.Where(h => h >= 0).ToArray();
            int[] stepSlots = [.. active.Select(r => slotOf[r])], stepTokens = [.. active.Select(r => next[r])];
            if (step % 2 == 0) decoder.Step(stepSlots, stepTokens, logits);
            else
            {
                // The overload a server steps with: the decoder's own logits, and each row's greedy token (found by
                // the head on the CPU decoder path; -1 on the module path), which must be Sampler's choice.
                var greedy = new int[active.Length];
                decoder.Step(stepSlots, stepTokens, greedy).CopyTo(logits);
                for (int i = 0; i < active.Length; i++)
                    Assert.Equal(useCpuDecoder ? new Sampler(SamplingOptions.Greedy).Sample(logits.AsSpan(i * vocab, vocab)) : -1, greedy[i]);
            }
            widest = Math.Max(widest, active.Length);
            for (int i = 0; i < active.Length; i++)
            {
                int r = active[i];
                produced[r].Add(logits.AsSpan(i * vocab, vocab).ToArray());
                next[r] = Argmax(produced[r][^1]);
            }
            for (int s = 0; s < slots && joined < requests && joined / 2 <= step; s++)
            {
                if (holder[s] >= 0) continue;
                int r = joined++;
                if (decoder.Length(s) > 0) reused++;
                decoder.Reset(s);
                holder[s] = r;
                slotOf[r] = s;
                produced[r].Add(decoder.Prefill(s, prompts[r]));
                next[r] = Argmax(produced[r][^1]);
                Assert.Equal(prompts[r].Length, decoder.Length(s));
            }
        }
        Assert.True(widest >= Math.Min(slots, 4) && reused > 0, $"the schedule ran at most {widest} rows per step and reused {reused} slots");

        for (int r = 0; r < requests; r++)
        {
            var cache = model.NewCache(1, ctx);
            using var lone = useCpuDecoder ? CpuDecoder.TryCreate(model, cache, out _, activations: activations) : null;
            float[] Alone(int[] ids) => lone is null ? TextGenerator.ModuleForward(model, ids, cache, activations) : TextGenerator.Forward(model, lone, ids, cache).ToArray();
            Assert.Equal(useCpuDecoder, lone is not null);
            float[] alone = Alone(prompts[r]);
            Assert.Equal(budget[r], produced[r].Count);
            for (int s = 0; s < produced[r].Count; s++)
            {
                Assert.True(alone.AsSpan().SequenceEqual(produced[r][s]), $"request {r}, step {s}: batched logits differ from the lone run (max |diff| {MaxDiff(alone, produced[r][s])})");
                if (s + 1 < produced[r].Count) alone = Alone([Argmax(alone)]);
            }
        }
    }

    // The head's chunks each find the greedy token of their part of a row; the step combines the parts. A tied head
    // whose second half of rows copies the first gives every logit twice, once in an early chunk and once in a late
    // one (2000 x 32 weights: four chunks on two threads), so the combination must keep the earlier of equal values,
    // as Sampler does; the head is read in both directions (it alternates per step). A NaN in one weight row makes
    // every row's token -1 (left to Sample, which reports it).
    [Fact]
    public void TheStepsGreedyTokensAreSamplersAcrossTheHeadsChunks()
    {
        var model = new LlamaForCausalLM(LlamaTests.Tiny(vocab: 2000, hidden: 32, layers: 1, heads: 4, kvHeads: 2, ffn: 40, maxPos: 64) with { TieWordEmbeddings = true }, new Generator(8));
        model.Eval();
        using var noGrad = GradMode.NoGrad();
        var table = model.Model.EmbedTokens.Weight;
        var rows = table.ToArray<float>();
        Array.Copy(rows, 0, rows, 1000 * 32, 1000 * 32);
        table.CopyFrom_(Tensor.FromArray(rows, [2000, 32]));
        using var decoder = new BatchedDecoder(model, 3, 16);
        Assert.True(decoder.UsesCpuDecoder);
        int[] slots = [0, 1, 2], tokens = [5, 6, 7];
        for (int s = 0; s < 3; s++) decoder.Prefill(s, [1, 2 + s]);
        var sampler = new Sampler(SamplingOptions.Greedy);
        var greedy = new int[3];
        for (int step = 0; step < 4; step++)
        {
            var logits = decoder.Step(slots, tokens, greedy).ToArray();
            for (int i = 0; i < 3; i++)
            {
                var row = logits.AsSpan(i * 2000, 2000);
                Assert.Equal(row[greedy[i]], row[greedy[i] + 1000]); // the tie is real
                Assert.True(greedy[i] < 1000, $"row {i}: token {greedy[i]}, not the first of its tie");
                Assert.Equal(sampler.Sample(row), greedy[i]);
                tokens[i] = greedy[i];
            }
        }
        rows[1500 * 32 + 3] = float.NaN;
        table.CopyFrom_(Tensor.FromArray(rows, [2000, 32]));
        using var broken = new BatchedDecoder(model, 2, 16);
        broken.Prefill(0, [1]);
        broken.Prefill(1, [2]);
        float[] nan = broken.Step([0, 1], [3, 4], greedy).ToArray();
        Assert.Equal([-1, -1], greedy[..2]);
        Assert.Throws<InvalidDataException>(() => sampler.Sample(nan[..2000]));
    }

    [Fact]
    public void ThePathIsChosenPerModel()
    {
        using var f32 = new BatchedDecoder(Tiny(), 2, 8);
        Assert.True(f32.UsesCpuDecoder, f32.Path);
        Assert.Null(BatchedDecoder.CpuDecoderUnsupported(Tiny()));
        // An unmerged LoRA adapter has no per-row term in the batched step: the modules run it.
        var lora = Tiny();
        lora.ReplaceModule("model.layers.0.self_attn.q_proj", LoraLinear.Wrap(lora.Model.Layers[0].SelfAttn.QProj, rank: 2, alpha: 4, dropout: 0, new Generator(1)));
        lora.Eval();
        using var withLora = new BatchedDecoder(lora, 2, 8);
        Assert.False(withLora.UsesCpuDecoder);
        Assert.Contains("LoRA", withLora.Path);
        Assert.Contains("LoRA", BatchedDecoder.CpuDecoderUnsupported(lora));
    }

    // The decoder's f32 multi-row product: every (weight row, x row) element equal bit for bit to the one-row
    // product (n = 1, a lone step), and within f32 rounding of an f64 reference, at every tail length and row count
    // (with AVX-512, two and more rows take the four-weight-row passes, and a tile's last weight rows the eight-row
    // pass from eight rows on), and with x larger than the L1 block (rows of x in blocks, weight rows in tiles).
    [Theory]
    [InlineData(new[] { 1, 7, 8, 9, 31, 32, 33, 40, 64, 71, 100 }, new[] { 1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 19 }, 5)]
    [InlineData(new[] { 100, 300 }, new[] { 45, 47 }, 90)] // 100 x 45 floats > 16 KB; 300 floats a row: tiles of 81 rows
    [InlineData(new[] { 1100 }, new[] { 8, 17 }, 30)] // eight rows of 1100 floats > 32 KB: blocks of one eight-row pass
    [InlineData(new[] { 8, 40, 72, 288 }, new[] { 2, 3, 8, 9 }, 12)] // 11 weight rows: two groups of four (the first prefetching the second), three alone
    public unsafe void MultiRowProductEqualsOneRowAndTheReference(int[] ks, int[] ns, int rows)
    {
        var gen = new Generator(23);
        foreach (int k in ks)
            foreach (int n in ns)
                foreach (bool accumulate in new[] { false, true })
                {
                    float[] w = [.. Enumerable.Range(0, rows * k).Select(_ => (float)(gen.NextDouble() * 2 - 1))];
                    float[] x = [.. Enumerable.Range(0, n * k).Select(_ => (float)(gen.NextDouble() * 2 - 1))];
                    float[] y0 = [.. Enumerable.Range(0, n * rows).Select(_ => (float)gen.NextDouble())];
                    float[] many = [.. y0], one = [.. y0];
                    fixed (float* pw = w, px = x, pm = many, po = one)
                    {
                        CpuDecoder.Rows(pw, k, px, n, pm, rows, 1, rows, accumulate);
                        for (int i = 0; i < n; i++) CpuDecoder.Rows(pw, k, px + i * k, 1, po + i * rows, rows, 1, rows, accumulate);
                    }
                    for (int i = 0; i < n; i++)
                    {
                        Assert.Equal(y0[i * rows], many[i * rows]); // weight row 0 is outside [1, rows): untouched
                        for (int r = 1; r < rows; r++)
                        {
                            double expected = accumulate ? y0[i * rows + r] : 0, scale = Math.Abs(expected);
                            for (int p = 0; p < k; p++) { expected += (double)w[r * k + p] * x[i * k + p]; scale += Math.Abs((double)w[r * k + p] * x[i * k + p]); }
                            Assert.True(BitConverter.SingleToInt32Bits(one[i * rows + r]) == BitConverter.SingleToInt32Bits(many[i * rows + r]),
                                $"k {k}, n {n}, row {i}, weight row {r}: {many[i * rows + r]} in a batch, {one[i * rows + r]} alone");
                            Assert.True(Math.Abs(many[i * rows + r] - expected) <= 1e-6 * (scale + 1), $"k {k}, n {n}: {many[i * rows + r]} vs f64 {expected}");
                        }
                    }
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
