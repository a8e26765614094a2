// CpuDecoder (the llama2.c-style single-token forward) against the model's modules: the same logits at
// every decode step (prefill through the modules, then one token at a time through each path, each
// with its own cache), with GQA, an untied head, LoRA adapters, sizes that are not multiples of the
// SIMD width, and attention long enough to run in parallel; and SpinPool's fork-join contract.
using TinyLlama.Autograd;
using TinyLlama.Backends.Cpu;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Tensors;
using TinyLlama.Tests.Model;

namespace TinyLlama.Tests.Generation;

public class CpuDecoderTests
{
    // f32 throughout; the two paths sum dot products in different orders, so logits (|x| ~ 1) agree
    // to a few ulps of the largest partial sums, far inside 2e-5 absolute.
    private const float Tolerance = 2e-5f;

    // relativeTolerance: the bound is relativeTolerance * max |logit| of each step instead of Tolerance.
    internal static void AssertSameLogits(LlamaForCausalLM model, int[] ids, int prefill, SpinPool pool, float? relativeTolerance = null,
        DecoderActivations activations = DecoderActivations.Float32)
    {
        using var _ = GradMode.NoGrad();
        var moduleCache = model.NewCache(1, ids.Length);
        var decoderCache = model.NewCache(1, ids.Length);
        TextGenerator.ModuleForward(model, ids[..prefill], moduleCache, activations);
        TextGenerator.ModuleForward(model, ids[..prefill], decoderCache, activations);
        using var decoder = CpuDecoder.TryCreate(model, decoderCache, out var why, pool, activations);
        Assert.True(decoder is not null, why);
        for (int t = prefill; t < ids.Length; t++)
        {
            var expected = TextGenerator.ModuleForward(model, [ids[t]], moduleCache, activations);
            var actual = decoder.Step(ids[t]).ToArray();
            Assert.Equal(moduleCache.Length, decoderCache.Length);
            Assert.Equal(expected.Length, actual.Length);
            float worst = 0, scale = 0;
            for (int i = 0; i < expected.Length; i++)
            {
                worst = Math.Max(worst, Math.Abs(expected[i] - actual[i]));
                scale = Math.Max(scale, Math.Abs(expected[i]));
            }
            float bound = relativeTolerance is { } r ? r * scale : Tolerance;
            Assert.True(worst <= bound, $"step {t}: max |difference| {worst} > {bound} (max |logit| {scale})");
        }
    }

    internal static int[] Ids(int n, int vocab, ulong seed)
    {
        var g = new Generator(seed);
        return Enumerable.Range(0, n).Select(_ => g.NextInt(vocab)).ToArray();
    }

    [Theory]
    [InlineData(0)] // the caller's thread only
    [InlineData(1)]
    [InlineData(3)] // more workers than this machine has cores
    public void DecodeStepsMatchTheModules(int workers)
    {
        // C = 40 (not a multiple of 8), HS = 10, F = 70 (not a multiple of 4), V = 53, GQA 4 -> 2 heads,
        // the head tied to the embedding (as in stories15M).
        var model = new LlamaForCausalLM(LlamaTests.Tiny(vocab: 53, hidden: 40, heads: 4, kvHeads: 2, ffn: 70) with { TieWordEmbeddings = true }, new Generator(3));
        Assert.Null(model.LmHead);
        model.Eval();
        AssertSameLogits(model, Ids(24, 53, 7), prefill: 5, new SpinPool(workers));
    }

    [Fact]
    public void UntiedHeadAndLongAttentionMatchTheModules()
    {
        // kvDim = 2 x 64 = 128, so attention over >= 128 positions runs as a parallel job.
        var config = LlamaTests.Tiny(vocab: 301, hidden: 256, heads: 4, kvHeads: 2, ffn: 300, maxPos: 200) with { TieWordEmbeddings = false };
        var model = new LlamaForCausalLM(config, new Generator(4));
        model.Eval();
        Assert.NotNull(model.LmHead);
        AssertSameLogits(model, Ids(150, 301, 8), prefill: 120, new SpinPool(1));
    }

    // Head sizes around attention's 8- and 16-float vector steps: 8, 16, 24, 40, 48 and 72 floats.
    [Theory]
    [InlineData(8)]
    [InlineData(16)]
    [InlineData(24)]
    [InlineData(40)]
    [InlineData(48)]
    [InlineData(72)]
    public void EveryHeadSizeMatchesTheModules(int headSize)
    {
        var model = new LlamaForCausalLM(LlamaTests.Tiny(vocab: 61, hidden: 2 * headSize, heads: 2, kvHeads: 1, ffn: 50), new Generator((ulong)headSize));
        model.Eval();
        AssertSameLogits(model, Ids(40, 61, (ulong)headSize), prefill: 3, new SpinPool(1));
    }

    [Fact]
    public void LoraAdaptersMatchTheModules()
    {
        var model = new LlamaForCausalLM(LlamaTests.Tiny(vocab: 53, hidden: 40, heads: 4, kvHeads: 2, ffn: 70), new Generator(5));
        var gen = new Generator(6);
        using (GradMode.NoGrad())
        {
            // Every projection of every layer but k_proj (q, v, o, gate, up, down in module order).
            foreach (var (name, module) in model.NamedModules().ToList())
            {
                if (module is not Linear lin || !name.StartsWith("model.layers.", StringComparison.Ordinal) || name.EndsWith("k_proj", StringComparison.Ordinal)) continue;
                var lora = LoraLinear.Wrap(lin, rank: 3, alpha: 6, dropout: 0.1, gen);
                model.ReplaceModule(name, lora);
                // B starts at zero (no change); make it non-zero so the adapter matters.
                lora.LoraB.Weight.CopyFrom_(Tensor.RandN(lora.LoraB.Weight.Shape, gen, DType.F32, Device.Cpu, 0, 0.2));
            }
        }
        model.Eval(); // dropout off, as in generation
        AssertSameLogits(model, Ids(20, 53, 9), prefill: 4, new SpinPool(1));

        model.Train();
        Assert.Null(CpuDecoder.TryCreate(model, model.NewCache(1, 8), out var why));
        Assert.Contains("dropout", why);
    }

    [Fact]
    public void GreedyGenerationIsTheSameOnBothPaths()
    {
        var model = new LlamaForCausalLM(LlamaTests.Tiny(vocab: 53, hidden: 40, heads: 4, kvHeads: 2, ffn: 70), new Generator(10));
        model.Eval();
        var fast = TextGenerator.Generate(model, [1, 2, 3], 30, SamplingOptions.Greedy).ToArray();
        var slow = TextGenerator.Generate(model, [1, 2, 3], 30, SamplingOptions.Greedy, useCpuDecoder: false).ToArray();
        Assert.Equal(slow, fast);
    }

    [Fact]
    public void UnsupportedModelsAreRefusedWithAReason()
    {
        var model = new LlamaForCausalLM(LlamaTests.Tiny(), new Generator(1), DType.BF16);
        Assert.Null(CpuDecoder.TryCreate(model, model.NewCache(1, 8), out var why));   // the model's own cache is bf16
        Assert.Contains("KV cache is not f32", why);
        Assert.Null(CpuDecoder.TryCreate(model, new KvCache(model.Config, 1, 8, DType.F32, Device.Cpu), out why));
        Assert.Contains("model.embed_tokens.weight is " + DType.BF16.Name(), why);
        var f32 = new LlamaForCausalLM(LlamaTests.Tiny(), new Generator(1));
        Assert.Null(CpuDecoder.TryCreate(f32, f32.NewCache(2, 8), out why));
        Assert.Contains("batch 2", why);
    }

    [Fact]
    public void DecoderChecksTokenAndCapacity()
    {
        var model = new LlamaForCausalLM(LlamaTests.Tiny(), new Generator(1));
        var cache = model.NewCache(1, 2);
        using var decoder = CpuDecoder.TryCreate(model, cache, out _)!;
        Assert.Throws<ArgumentOutOfRangeException>(() => decoder.Step(37));
        decoder.Step(1);
        decoder.Step(2);
        var e = Assert.Throws<InvalidOperationException>(() => decoder.Step(3));
        Assert.Contains("KV cache full", e.Message);
    }

    private sealed class CountingJob(int tasks) : IPoolJob
    {
        public readonly int[] Hits = new int[tasks];
        public void Execute(int task) => Interlocked.Increment(ref Hits[task]);
    }

    private sealed class FailingJob : IPoolJob
    {
        public void Execute(int task)
        {
            if (task == 5) throw new InvalidOperationException("task 5 failed");
        }
    }

    [Fact]
    public void SpinPoolRunsEveryTaskOnceAndReportsFailures()
    {
        var pool = new SpinPool(2);
        for (int round = 0; round < 200; round++)
        {
            var job = new CountingJob(1 + round % 37);
            pool.Run(job, job.Hits.Length);
            Assert.All(job.Hits, h => Assert.Equal(1, h));
        }
        var e = Assert.Throws<AggregateException>(() => pool.Run(new FailingJob(), 10));
        Assert.Contains("task 5 failed", e.InnerException!.Message);
        // After a failure the pool still works, and two threads may call it at once (one runs serially).
        var a = new CountingJob(1000);
        var b = new CountingJob(1000);
        Parallel.Invoke(() => pool.Run(a, 1000), () => pool.Run(b, 1000));
        Assert.All(a.Hits, h => Assert.Equal(1, h));
        Assert.All(b.Hits, h => Assert.Equal(1, h));
    }
}
