// Prompt caching in BatchScheduler: a joining request keeps the longest prefix of its prompt that a free slot's
// cache holds and prefills only the rest. Checked by counts (the tokens each request found cached) and by
// answers: every answer equals the prompt decoded alone with the same seeded sampler, which fails if a kept
// position held anything other than what a fresh prefill writes there (the last generated token, never fed, is
// not kept); and the scheduler itself fails a request whose slot's cache length and token count disagree.
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Serving;
using TinyLlama.Tensors;
using TinyLlama.Tests.Model;
using static TinyLlama.Tests.Training.DataTestUtil;

namespace TinyLlama.Tests.Serving;

public class PromptCacheTests
{
    private const int MaxTokens = 6;

    // Sampled at temperature 1 with a seed (the same draws alone and in the scheduler): a token then depends on the
    // whole distribution, not only on which logit is largest, so a wrong cached position shows more often.
    private static readonly SamplingOptions Sampling = new(Temperature: 1.0, Seed: 11);

    private static LlamaForCausalLM Tiny()
    {
        var model = new LlamaForCausalLM(LlamaTests.Tiny(vocab: 260, hidden: 32, layers: 2, heads: 4, kvHeads: 2, ffn: 40, maxPos: 96), new Generator(31));
        model.Eval();
        return model;
    }

    private static int[] Prompt(string text) => [ByteTokenizer.BosId, .. ByteTokenizer.Encode(text)];

    // Runs one request to its end: its text and the prompt tokens it found cached.
    private static async Task<(string Text, int Cached)> Run(BatchScheduler scheduler, int[] prompt)
    {
        var text = new System.Text.StringBuilder();
        int cached = -1;
        await foreach (var u in scheduler.Submit(new GenerationRequest(prompt, MaxTokens, Sampling)))
        {
            text.Append(u.Text);
            cached = u.CachedPromptTokens;
        }
        return (text.ToString(), cached);
    }

    // The ids of prompt decoded alone on the CPU decoder (whose steps the batched ones equal bit for bit).
    private static int[] AloneIds(LlamaForCausalLM model, int[] prompt) =>
        [.. TextGenerator.Generate(model, prompt, MaxTokens, Sampling, [ByteTokenizer.EosId], useCpuDecoder: true)];

    private static string Alone(LlamaForCausalLM model, int[] prompt) => ByteTokenizer.Decode(AloneIds(model, prompt).Where(i => i != ByteTokenizer.EosId));

    [Fact]
    public async Task ARepeatedPromptAndAChatsNextTurnPrefillOnlyWhatIsNew()
    {
        var model = Tiny();
        using var scheduler = new BatchScheduler(model, ByteTokenizer, new SchedulerOptions(Parallel: 2, ContextSize: 96));
        Assert.True(scheduler.CachesPrompts);
        int[] first = Prompt("Once upon a time");
        var a = await Run(scheduler, first);
        Assert.Equal(Alone(model, first), a.Text);
        Assert.Equal(0, a.Cached);
        int[] answer = AloneIds(model, first);
        Assert.Equal(MaxTokens, answer.Length);
        Assert.DoesNotContain(ByteTokenizer.EosId, answer); // every generated token but the last was fed to the slot

        // The same prompt again: all but its last token, which runs again for its logits.
        var again = await Run(scheduler, first);
        Assert.Equal(a.Text, again.Text);
        Assert.Equal(first.Length - 1, again.Cached);

        // The next turn of a chat: the conversation so far (prompt and answer) and a new message. The slot holds
        // the prompt and the answer's first MaxTokens - 1 tokens (the last was sampled, never fed).
        int[] next = [.. first, .. answer, .. ByteTokenizer.Encode(" and then")];
        var b = await Run(scheduler, next);
        Assert.Equal(Alone(model, next), b.Text);
        Assert.Equal(first.Length + MaxTokens - 1, b.Cached);
        Assert.Equal(first.Length - 1 + first.Length + MaxTokens - 1, scheduler.ReusedPromptTokens);
    }

    [Fact]
    public async Task ARequestTakesTheFreeSlotWithTheLongestSharedPrefix()
    {
        var model = Tiny();
        using var scheduler = new BatchScheduler(model, ByteTokenizer, new SchedulerOptions(Parallel: 3, ContextSize: 96));
        int[] cat = Prompt("the cat sat on the mat"), dog = Prompt("a dog ran"), dogMore = Prompt("a dog ran far away");
        Assert.Equal(0, (await Run(scheduler, cat)).Cached); // slot 0
        // "a dog ran" shares its first tokens (BOS, the space) with slot 0, less than half of it: the least recently
        // used slot, an empty one, so slot 0 keeps the cat.
        Assert.True(cat.Zip(dog).TakeWhile(p => p.First == p.Second).Count() > 0);
        Assert.Equal(0, (await Run(scheduler, dog)).Cached);
        // Slot 1 holds "a dog ran" and its answer, more than half of "a dog ran far away".
        var more = await Run(scheduler, dogMore);
        Assert.Equal(dog.Length, more.Cached);
        Assert.Equal(Alone(model, dogMore), more.Text);
        var catAgain = await Run(scheduler, cat);
        Assert.Equal(cat.Length - 1, catAgain.Cached);
        Assert.Equal(Alone(model, cat), catAgain.Text);
        Assert.Equal(dog.Length + cat.Length - 1, scheduler.ReusedPromptTokens);
    }

    [Fact]
    public async Task RequestsDecodingTogetherOverCachedPrefixesEachGetTheirLoneAnswer()
    {
        var model = Tiny();
        using var scheduler = new BatchScheduler(model, ByteTokenizer, new SchedulerOptions(Parallel: 4, ContextSize: 96));
        int[][] prompts = [Prompt("one two"), Prompt("one two three"), Prompt("four"), Prompt("one two three four five")];
        for (int round = 0; round < 3; round++)
        {
            var results = await Task.WhenAll(prompts.Select(p => Task.Run(() => Run(scheduler, p))));
            for (int i = 0; i < prompts.Length; i++) Assert.Equal(Alone(model, prompts[i]), results[i].Text);
        }
        Assert.True(scheduler.ReusedPromptTokens > 0);
    }

    [Fact]
    public async Task WithoutPromptCachingOrWhereTheDecoderForbidsItEveryPromptRunsWhole()
    {
        var model = Tiny();
        int[] prompt = Prompt("Once upon a time");
        using (var off = new BatchScheduler(model, ByteTokenizer, new SchedulerOptions(Parallel: 2, ContextSize: 96, CachePrompts: false)))
        {
            Assert.False(off.CachesPrompts);
            await Run(off, prompt);
            var again = await Run(off, prompt);
            Assert.Equal(0, again.Cached);
            Assert.Equal(Alone(model, prompt), again.Text);
            Assert.Equal(0, off.ReusedPromptTokens);
        }
        // An unmerged LoRA adapter runs on the modules, whose prefill and steps round differently: no reuse.
        var lora = Tiny();
        lora.ReplaceModule("model.layers.0.self_attn.q_proj", LoraLinear.Wrap(lora.Model.Layers[0].SelfAttn.QProj, rank: 2, alpha: 4, dropout: 0, new Generator(1)));
        lora.Eval();
        using var modules = new BatchScheduler(lora, ByteTokenizer, new SchedulerOptions(Parallel: 2, ContextSize: 96));
        Assert.False(modules.CachesPrompts);
        await Run(modules, prompt);
        Assert.Equal(0, (await Run(modules, prompt)).Cached);
    }
}
