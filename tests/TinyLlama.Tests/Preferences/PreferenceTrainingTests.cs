// DPO and the reward model trained by the shared trainer on a tiny random LLaMA and a synthetic,
// separable preference set (chosen responses drawn from ids 3..12, rejected ones from 20..34):
// DPO raises the chosen-minus-rejected margin; the cached reference log-probabilities do not move during
// LoRA training and equal a recomputation with the adapters switched off (while the policy's own do
// move); a resumed DPO run repeats the uninterrupted losses and metrics bit for bit; the reward model's
// loss falls and its held-out accuracy reaches 1; a saved reward model scores the same after loading.
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Training;
using TinyLlama.Training.Data;
using TinyLlama.Training.Lora;
using TinyLlama.Training.Preferences;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Tests.Preferences;

public class PreferenceTrainingTests
{
    private const int MaxLength = 32;

    internal static List<TokenizedPair> SeparablePairs(int count, int seed)
    {
        var gen = new Generator((ulong)seed);
        var pairs = new List<TokenizedPair>();
        for (int i = 0; i < count; i++)
        {
            var prompt = new List<int> { 1 };
            for (int j = 0, n = 2 + gen.NextInt(3); j < n; j++) prompt.Add(3 + gen.NextInt(34));
            SftExample Side(int low, int high)
            {
                var ids = new List<int>(prompt);
                for (int j = 0, n = 2 + gen.NextInt(3); j < n; j++) ids.Add(low + gen.NextInt(high - low));
                ids.Add(2);
                var labels = ids.Select((id, k) => k < prompt.Count ? TrainingInfo.IgnoreIndex : id).ToArray();
                return new SftExample([.. ids], labels, $"toy:{i + 1}");
            }
            pairs.Add(new TokenizedPair(Side(3, 13), Side(20, 35), $"toy:{i + 1}"));
        }
        return pairs;
    }

    private static (SftTrainer Trainer, DpoObjective Objective, LlamaForCausalLM Policy) NewDpoRun(
        List<TokenizedPair> pairs, SftOptions options, DpoOptions dpo, bool lora, ulong seed = 3)
    {
        var policy = new LlamaForCausalLM(TinyLlama.Tests.Model.LlamaTests.Tiny(), new Generator(11));
        var rng = new Generator(seed);
        if (lora) Lora.Apply(policy, new LoraConfig(4, 8, 0.0, ["q", "k", "v", "o", "gate", "up", "down"]), rng);
        var loader = new PreferenceDataLoader(pairs, 2, shuffle: true, seed: 5);
        var objective = new DpoObjective(policy, loader, dpo, padId: 0, MaxLength);
        return (new SftTrainer(policy, objective, options, rng: rng), objective, policy);
    }

    // The mean of h = (pi_c - pi_r) - (ref_c - ref_r) over the pairs, from fresh policy log-probabilities.
    private static double MeanMargin(LlamaForCausalLM policy, DpoObjective objective, List<TokenizedPair> pairs)
    {
        var (pc, pr) = PolicyLogProbs(policy, pairs);
        double sum = 0;
        for (int i = 0; i < pairs.Count; i++) sum += (pc[i] - pr[i]) - (objective.ReferenceChosen[i] - objective.ReferenceRejected[i]);
        return sum / pairs.Count;
    }

    private static (double[] Chosen, double[] Rejected) PolicyLogProbs(LlamaForCausalLM policy, List<TokenizedPair> pairs)
    {
        policy.Eval();
        using var _ = GradMode.NoGrad();
        var batch = DpoObjective.Collate(pairs, Enumerable.Range(0, pairs.Count).ToArray(), 0, MaxLength);
        var logps = DpoLoss.SequenceLogProbs(policy.Forward(batch.InputIds), batch.Targets).To(DType.F64).ToArray<double>();
        policy.Train();
        return (logps[..pairs.Count], logps[pairs.Count..]);
    }

    [Theory]
    [InlineData(DpoLossKind.Sigmoid, false)]
    [InlineData(DpoLossKind.Sigmoid, true)]
    [InlineData(DpoLossKind.Ipo, true)]
    [InlineData(DpoLossKind.Hinge, false)]
    public void DpoRaisesTheChosenMinusRejectedMargin(DpoLossKind kind, bool lora)
    {
        var pairs = SeparablePairs(6, 1);
        var (trainer, objective, policy) = NewDpoRun(pairs, new SftOptions { Steps = 12, Lr = lora ? 2e-2 : 5e-3 }, new DpoOptions(0.5, kind), lora);
        double before = MeanMargin(policy, objective, pairs);
        Assert.Equal(0, before, 6); // the policy starts as its reference
        var logs = Enumerable.Range(0, 12).Select(_ => trainer.TrainStep()).ToList();
        double after = MeanMargin(policy, objective, pairs);
        Assert.True(after > 0.5, $"{kind}: mean margin {before} -> {after}");
        Assert.True(logs[^1].Loss < logs[0].Loss, $"{kind}: loss {logs[0].Loss} -> {logs[^1].Loss}");
        Assert.Equal(DpoObjective.Metrics, logs[^1].Metrics.Keys);
        var m = logs[^1].Metrics;
        Assert.Equal(m["rewards/chosen"] - m["rewards/rejected"], m["rewards/margins"], 6);
        Assert.InRange(m["rewards/accuracies"], 0, 1);
    }

    [Fact]
    public void RpoAddsTheChosenPerTokenNllToTheLoss()
    {
        // One batch of every pair, first step (the policy is its reference, so DPO's part is log 2 per pair):
        // the logged loss with alpha minus the one without is alpha x the mean over pairs of -log p(chosen) / tokens.
        var pairs = SeparablePairs(5, 7);
        double FirstLoss(double alpha, out LlamaForCausalLM policy)
        {
            policy = new LlamaForCausalLM(TinyLlama.Tests.Model.LlamaTests.Tiny(), new Generator(11));
            var objective = new DpoObjective(policy, new PreferenceDataLoader(pairs, pairs.Count, shuffle: false, seed: 5), new DpoOptions(0.5, RpoAlpha: alpha), padId: 0, MaxLength);
            return new SftTrainer(policy, objective, new SftOptions { Steps = 1, Lr = 1e-3 }).TrainStep().Loss;
        }
        double plain = FirstLoss(0, out _), withRpo = FirstLoss(0.7, out var fresh);
        Assert.Equal(Math.Log(2), plain, 5);
        var fresh2 = new LlamaForCausalLM(TinyLlama.Tests.Model.LlamaTests.Tiny(), new Generator(11)); // the untrained start
        var (chosen, _) = PolicyLogProbs(fresh2, pairs);
        double nll = Enumerable.Range(0, pairs.Count).Average(i => -chosen[i] / pairs[i].Chosen.TargetCount);
        Assert.True(nll > 1, $"per-token NLL {nll}: a random model should find the responses unlikely");
        Assert.Equal(0.7 * nll, withRpo - plain, 4);
        Assert.Contains("rpo alpha", Assert.Throws<ArgumentException>(() => new DpoOptions(RpoAlpha: -1).Validate()).Message);
    }

    [Fact]
    public void ReferenceLogProbsDoNotMoveDuringLoraTraining()
    {
        var pairs = SeparablePairs(5, 2);
        var (trainer, objective, policy) = NewDpoRun(pairs, new SftOptions { Steps = 4, Lr = 3e-2 }, new DpoOptions(0.5), lora: true);
        var storedChosen = objective.ReferenceChosen.ToArray();
        var storedRejected = objective.ReferenceRejected.ToArray();
        var (startChosen, _) = PolicyLogProbs(policy, pairs);
        for (int i = 0; i < 4; i++) trainer.TrainStep();
        Assert.Equal(storedChosen, objective.ReferenceChosen);
        Assert.Equal(storedRejected, objective.ReferenceRejected);
        // Recomputed now, with the trained adapters switched off: the base model, bit for bit.
        var (c, r) = DpoObjective.ReferenceLogProbs(policy, pairs, 2, 0, MaxLength);
        Assert.Equal(storedChosen, c);
        Assert.Equal(storedRejected, r);
        // ...while the policy itself (adapters on) has moved, so the comparison above is not vacuous.
        var (nowChosen, _) = PolicyLogProbs(policy, pairs);
        Assert.True(nowChosen.Zip(startChosen).Max(x => Math.Abs(x.First - x.Second)) > 1e-3);
        Assert.All(Lora.AdaptedLayers(policy), l => Assert.True(l.Layer.AdapterEnabled));
    }

    [Fact]
    public void ResumedDpoRunRepeatsTheUninterruptedLosses()
    {
        var pairs = SeparablePairs(5, 3);
        var options = new SftOptions { Steps = 6, Lr = 1e-2, Warmup = 1, GradAccum = 2, GradClip = 1.0 };
        var dpo = new DpoOptions(0.3, DpoLossKind.Sigmoid, 0.1);
        var (straight, _, _) = NewDpoRun(pairs, options, dpo, lora: true);
        var straightLogs = Enumerable.Range(0, 6).Select(_ => straight.TrainStep()).ToList();
        var dir = Directory.CreateTempSubdirectory("tinyllama-dpo-resume-");
        try
        {
            var ckpt = Path.Combine(dir.FullName, "checkpoint");
            var (first, _, _) = NewDpoRun(pairs, options, dpo, lora: true);
            var logs = Enumerable.Range(0, 3).Select(_ => first.TrainStep()).ToList();
            first.SaveCheckpoint(ckpt);
            var (second, _, _) = NewDpoRun(pairs, options, dpo, lora: true, seed: 99); // other init: the checkpoint must win
            second.LoadCheckpoint(ckpt);
            Assert.Equal(logs.Select(l => l.Metrics["rewards/margins"]), second.History.Select(h => h.Metrics["rewards/margins"]));
            logs.AddRange(Enumerable.Range(0, 3).Select(_ => second.TrainStep()));
            Assert.Equal(straightLogs.Select(l => l.Loss), logs.Select(l => l.Loss));
            Assert.Equal(straightLogs.Select(l => l.Metrics["rewards/margins"]), logs.Select(l => l.Metrics["rewards/margins"]));
        }
        finally { dir.Delete(true); }
    }

    [Fact]
    public void LoraDisabledComputesTheBaseModel()
    {
        var model = new LlamaForCausalLM(TinyLlama.Tests.Model.LlamaTests.Tiny(), new Generator(2));
        var ids = Tensor.FromArray(new[] { 1, 5, 9, 2, 30, 7 }, [1, 6]);
        float[] Logits() { using var _ = GradMode.NoGrad(); return model.Forward(ids).ToArray<float>(); }
        var baseLogits = Logits();
        Lora.Apply(model, new LoraConfig(2, 4, 0.0, ["q", "v"]), new Generator(1));
        using (GradMode.NoGrad())
            foreach (var (_, layer) in Lora.AdaptedLayers(model)) layer.LoraB.Weight.Fill_(0.1);
        Assert.NotEqual(baseLogits, Logits());
        using (Lora.Disabled(model)) Assert.Equal(baseLogits, Logits());
        Assert.NotEqual(baseLogits, Logits()); // the scope restored the adapters
    }

    private static (SftTrainer Trainer, RewardModel Model) NewRewardRun(List<TokenizedPair> pairs, int steps, bool lora)
    {
        var lm = new LlamaForCausalLM(TinyLlama.Tests.Model.LlamaTests.Tiny(), new Generator(21));
        var rng = new Generator(8);
        if (lora) Lora.Apply(lm, new LoraConfig(4, 8, 0.0, ["q", "v", "up", "down"]), rng);
        var model = new RewardModel(lm, new Generator(9));
        var objective = new RewardObjective(model, new PreferenceDataLoader(pairs, 4, shuffle: true, seed: 2), padId: 0, MaxLength);
        return (new SftTrainer(model, objective, new SftOptions { Steps = steps, Lr = lora ? 2e-2 : 1e-2 }, rng: rng), model);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void RewardModelLearnsASeparableSet(bool lora)
    {
        var train = SeparablePairs(12, 4);
        var heldOut = SeparablePairs(8, 5);
        var (trainer, model) = NewRewardRun(train, 30, lora);
        var (lossBefore, _) = RewardObjective.Evaluate(model, heldOut, 4, 0, MaxLength);
        var logs = Enumerable.Range(0, 30).Select(_ => trainer.TrainStep()).ToList();
        var (lossAfter, accuracy) = RewardObjective.Evaluate(model, heldOut, 4, 0, MaxLength);
        Assert.True(lossAfter < lossBefore, $"held-out loss {lossBefore} -> {lossAfter}");
        Assert.True(logs.TakeLast(5).Average(l => l.Loss) < logs.Take(5).Average(l => l.Loss));
        Assert.Equal(1.0, accuracy);
        Assert.Equal(1.0, logs[^1].Metrics["accuracy"]);
        // Evaluate's loss is the mean of -log sigmoid(r_c - r_r) over the pairs' rewards.
        var (rc, rr) = RewardObjective.PairRewards(model, heldOut, 3, 0, MaxLength);
        double direct = rc.Zip(rr).Average(x => Math.Log(1 + Math.Exp(-(x.First - x.Second))));
        Assert.Equal(direct, lossAfter, 9);
    }

    [Fact]
    public void RewardIsReadAtTheLastRealTokenWhateverThePadding()
    {
        var lm = new LlamaForCausalLM(TinyLlama.Tests.Model.LlamaTests.Tiny(), new Generator(5));
        var model = new RewardModel(lm, new Generator(6));
        int[] shortRow = [1, 4, 5, 2], longRow = [1, 7, 8, 9, 10, 11, 2];
        var alone = RewardObjective.Rewards(model, [shortRow], 1, 0, MaxLength);
        var batched = RewardObjective.Rewards(model, [shortRow, longRow], 2, 0, MaxLength);
        Assert.Equal(alone[0], batched[0], 5);
        // By hand: score . hidden state at the EOS of the short row.
        using var _ = GradMode.NoGrad();
        model.Eval();
        var h = lm.HiddenStates(Tensor.FromArray(shortRow, [1, 4])).ToArray<float>();
        var w = model.Score.Weight.ToArray<float>();
        double byHand = 0;
        for (int c = 0; c < w.Length; c++) byHand += w[c] * h[3 * w.Length + c];
        Assert.Equal(byHand, alone[0], 5);
    }

    [Fact]
    public void RewardScorerScoresTheTokenisedPairAndServesAScoreJudge()
    {
        var tok = TinyLlama.Tests.Training.DataTestUtil.ByteTokenizer;
        var lm = new LlamaForCausalLM(TinyLlama.Tests.Model.LlamaTests.Tiny(vocab: tok.VocabSize), new Generator(7));
        var model = new RewardModel(lm, new Generator(8));
        var scorer = new RewardScorer(model, tok, MaxLength);
        int[] ids = [TinyLlama.Tests.Training.DataTestUtil.Bos, .. TinyLlama.Tests.Training.DataTestUtil.Enc("Hi ab"), TinyLlama.Tests.Training.DataTestUtil.Eos];
        double byIds = RewardObjective.Rewards(model, [ids], 1, 0, MaxLength)[0];
        Assert.Equal(byIds, scorer.Score("Hi", " ab"));
        var batch = scorer.Score([("Hi", " ab"), ("Hi", " cd")], 2);
        Assert.Equal(byIds, batch[0], 5);
        Assert.NotEqual(batch[0], batch[1]);
        var judge = new TinyLlama.Training.Judging.ScoreJudge("reward", scorer.Score);
        var expected = batch[0] > batch[1] ? TinyLlama.Training.Judging.Preference.A : TinyLlama.Training.Judging.Preference.B;
        Assert.Equal(expected, judge.Compare("Hi", " ab", " cd"));
    }

    [Fact]
    public void SavedRewardModelScoresTheSameAfterLoading()
    {
        var pairs = SeparablePairs(6, 6);
        var (trainer, model) = NewRewardRun(pairs, 3, lora: true);
        for (int i = 0; i < 3; i++) trainer.TrainStep();
        var before = RewardObjective.PairRewards(model, pairs, 4, 0, MaxLength);
        Lora.Merge(model.LanguageModel);
        var dir = Directory.CreateTempSubdirectory("tinyllama-reward-");
        try
        {
            model.Save(dir.FullName);
            Assert.True(RewardModel.IsRewardModelDirectory(dir.FullName));
            var ckpt = TinyLlama.Formats.Checkpoint.Load(dir.FullName);
            var loaded = RewardModel.Load(dir.FullName, LlamaForCausalLM.FromWeights(ckpt.Config, ckpt.Weights));
            var after = RewardObjective.PairRewards(loaded, pairs, 4, 0, MaxLength);
            for (int i = 0; i < pairs.Count; i++)
            {
                // Merging W + s B A rounds once in f32; the rewards agree to that rounding.
                Assert.Equal(before.Chosen[i], after.Chosen[i], 4);
                Assert.Equal(before.Rejected[i], after.Rejected[i], 4);
            }
            File.WriteAllText(Path.Combine(dir.FullName, RewardModel.MarkerFileName), "{\"kind\": \"model\"}");
            var e = Assert.Throws<InvalidDataException>(() => RewardModel.Load(dir.FullName, loaded.LanguageModel));
            Assert.Contains("reward_model.json: field \"kind\"", e.Message);
        }
        finally { dir.Delete(true); }
    }
}
