// CpuDecoder.Prefill (the decoder's integer GEMM pass over a prompt) against the module path under integer
// activations and against token-by-token decoding: the same logits after the prompt, the same cache afterwards
// (checked by decoding on from it), whole prompts, prompts in several calls and in chunks, and the models it
// must refuse with a reason.
using TinyLlama.Autograd;
using TinyLlama.Backends.Cpu;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tests.Model;

namespace TinyLlama.Tests.Generation;

public class CpuDecoderPrefillTests
{
    // Both paths quantize the same activations to Q8_0 and run the same integer kernels; they differ in the f32
    // summation order of RMSNorm, attention and the GEMM's (mat-vec's) block sums, and a difference of one ulp
    // before a quantization can move an 8-bit code by one. Measured here: 0.3-0.8% of the max |logit|, as for the
    // integer decode steps (QuantizedCpuDecoderTests.IntegerDecodeStepsMatchTheIntegerModules, bound 3%); a wrong
    // row, token position, head or a missing residual is off by tens of percent.
    private const float RelativeTolerance = 0.03f;

    private static LlamaForCausalLM Model(ulong seed, bool tied = true) =>
        QuantizedCpuDecoderTests.Model(QuantType.Q4_0, tied, quantizedEmbedding: true, seed);

    private static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        float worst = 0, scale = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(float.IsFinite(actual[i]), $"{what}: logit {i} is {actual[i]}");
            worst = Math.Max(worst, Math.Abs(expected[i] - actual[i]));
            scale = Math.Max(scale, Math.Abs(expected[i]));
        }
        Assert.True(worst <= RelativeTolerance * scale, $"{what}: max |difference| {worst} > {RelativeTolerance} x {scale}");
    }

    [SkippableTheory]
    [InlineData(1, true)]   // a single token through the prefill pass (attention over one position)
    [InlineData(37, true)]  // query blocks of 16 with a tail, the caller's thread and two workers
    [InlineData(37, false)] // an untied q4_0 head
    public void PrefillMatchesTheIntegerModulesAndDecodingGoesOn(int prompt, bool tied)
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "the repacked Q4_0 kernels need AVX2 and FMA");
        var model = Model(80, tied);
        var ids = CpuDecoderTests.Ids(prompt + 6, 300, 81);
        using var _ = GradMode.NoGrad();
        var moduleCache = model.NewCache(1, ids.Length);
        var decoderCache = model.NewCache(1, ids.Length);
        using var decoder = CpuDecoder.TryCreate(model, decoderCache, out var why, new SpinPool(2), DecoderActivations.Quantized);
        Assert.True(decoder is not null, why);
        Assert.True(decoder.CanPrefill, decoder.PrefillUnsupported);
        var expected = TextGenerator.ModuleForward(model, ids[..prompt], moduleCache, DecoderActivations.Quantized);
        AssertClose(expected, decoder.Prefill(ids[..prompt]), "prefill");
        Assert.Equal(prompt, decoderCache.Length);
        // Decoding on reads the keys and values the prefill cached: a wrong position or head there shows here.
        for (int t = prompt; t < ids.Length; t++)
            AssertClose(TextGenerator.ModuleForward(model, [ids[t]], moduleCache, DecoderActivations.Quantized), decoder.Step(ids[t]), $"step {t}");
    }

    [SkippableTheory]
    [InlineData(192, 4)] // HS = 48 (stories15M): sixteen output columns twice, then eight
    [InlineData(160, 4)] // HS = 40: an eight-column tail after two sixteens
    [InlineData(96, 8)]  // HS = 12: not a multiple of 8, one query at a time
    public void EveryHeadSizeMatchesTheIntegerModules(int hidden, int heads)
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "the repacked Q4_0 kernels need AVX2 and FMA");
        var config = LlamaTests.Tiny(vocab: 64, hidden: hidden, layers: 2, heads: heads, kvHeads: heads / 2, ffn: 2 * hidden, maxPos: 64) with { TieWordEmbeddings = true };
        var source = new LlamaForCausalLM(config, new Generator(90));
        var weights = new Dictionary<string, Tensor>();
        using var _ = GradMode.NoGrad();
        foreach (var (name, p) in source.NamedParameters())
            weights[name] = p.Rank == 2 ? Quantize.ToBlocks(p.Detach(), QuantType.Q4_0) : p.Detach();
        var model = LlamaForCausalLM.FromWeights(config, weights);
        model.Eval();
        var ids = CpuDecoderTests.Ids(45, 64, 91);
        using var decoder = CpuDecoder.TryCreate(model, model.NewCache(1, 50), out var why, new SpinPool(2), DecoderActivations.Quantized);
        Assert.True(decoder is { CanPrefill: true }, why ?? decoder?.PrefillUnsupported);
        // Two calls: the second chunk's queries also attend to the first's cached keys.
        decoder!.Prefill(ids[..20]);
        var expected = TextGenerator.ModuleForward(model, ids, model.NewCache(1, 50), DecoderActivations.Quantized);
        AssertClose(expected, decoder.Prefill(ids[20..]), $"HS = {hidden / heads}");
    }

    [SkippableFact]
    public void PrefillMatchesStepByStepDecoding()
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "the repacked Q4_0 kernels need AVX2 and FMA");
        var model = Model(82);
        var ids = CpuDecoderTests.Ids(20, 300, 83);
        using var _ = GradMode.NoGrad();
        using var stepper = CpuDecoder.TryCreate(model, model.NewCache(1, ids.Length), out var why, new SpinPool(1), DecoderActivations.Quantized)!;
        float[] stepped = [];
        foreach (int id in ids) stepped = stepper.Step(id).ToArray();
        using var prefiller = CpuDecoder.TryCreate(model, model.NewCache(1, ids.Length), out why, new SpinPool(1), DecoderActivations.Quantized)!;
        AssertClose(stepped, prefiller.Prefill(ids), "prefill against 20 steps");
    }

    [SkippableTheory]
    [InlineData(7)]  // chunks of 7: a whole number of chunks is not needed
    [InlineData(40)] // one chunk
    public void PrefillInChunksAndInSeveralCallsMatchesOnePass(int chunk)
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "the repacked Q4_0 kernels need AVX2 and FMA");
        var model = Model(84);
        var ids = CpuDecoderTests.Ids(30, 300, 85);
        using var _ = GradMode.NoGrad();
        using var whole = CpuDecoder.TryCreate(model, model.NewCache(1, 40), out var why, new SpinPool(1), DecoderActivations.Quantized)!;
        var expected = whole.Prefill(ids).ToArray();
        var cache = model.NewCache(1, 40);
        using var pieces = CpuDecoder.TryCreate(model, cache, out why, new SpinPool(1), DecoderActivations.Quantized)!;
        pieces.PrefillChunk = chunk;
        pieces.Prefill(ids[..11]);
        var actual = pieces.Prefill(ids[11..]).ToArray();
        Assert.Equal(30, cache.Length);
        // The same kernels on the same rows in the same order: a chunk boundary changes nothing but which call
        // computes a row, so the logits are bit-identical.
        Assert.Equal(expected, actual);
        Assert.Equal(whole.Step(ids[0]).ToArray(), pieces.Step(ids[0]).ToArray());
    }

    [Fact]
    public void PrefillIsRefusedWithAReasonWhereItDoesNotApply()
    {
        var q4 = Model(86);
        var q8 = QuantizedCpuDecoderTests.Model(QuantType.Q8_0, tied: true, quantizedEmbedding: true, seed: 87);
        using (var f32Activations = CpuDecoder.TryCreate(q4, q4.NewCache(1, 8), out _, activations: DecoderActivations.Float32)!)
        {
            Assert.False(f32Activations.CanPrefill);
            Assert.Contains("f32 activations", f32Activations.PrefillUnsupported);
            Assert.Contains("does not apply", Assert.Throws<InvalidOperationException>(() => f32Activations.Prefill([1, 2])).Message);
        }
        using (var q8Decoder = CpuDecoder.TryCreate(q8, q8.NewCache(1, 8), out _, activations: DecoderActivations.Quantized)!)
            Assert.Contains("not q4_0", q8Decoder.PrefillUnsupported);
        if (!RepackedQ4_0.IsSupported) return;
        using var decoder = CpuDecoder.TryCreate(q4, q4.NewCache(1, 8), out _, activations: DecoderActivations.Quantized)!;
        Assert.Throws<ArgumentOutOfRangeException>(() => decoder.Prefill([1, 300]));
        Assert.Throws<ArgumentException>(() => decoder.Prefill([]));
        Assert.Contains("KV cache full", Assert.Throws<InvalidOperationException>(() => decoder.Prefill(new int[9])).Message);
        Assert.Equal(0, q4.NewCache(1, 8).Length);
    }

    [SkippableFact]
    public void GenerationWithPrefillGivesTheModulesGreedyTokens()
    {
        Skip.IfNot(RepackedQ4_0.IsSupported, "the repacked Q4_0 kernels need AVX2 and FMA");
        var model = Model(88);
        using (var decoder = CpuDecoder.TryCreate(model, model.NewCache(1, 40), out var why))
            Assert.True(decoder is { CanPrefill: true }, why ?? decoder?.PrefillUnsupported);
        var prompt = CpuDecoderTests.Ids(12, 300, 89);
        var fast = TextGenerator.Generate(model, prompt, 20, SamplingOptions.Greedy).ToArray();
        var slow = TextGenerator.Generate(model, prompt, 20, SamplingOptions.Greedy, useCpuDecoder: false).ToArray();
        Assert.Equal(slow, fast);
    }
}
