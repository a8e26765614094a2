// `tinyllama demo --stage preferences`: the rest of the recipe over the instruction-tuned model that
// `tinyllama demo` left in --out (same --seed and --quick), each step measured on the same held-out items: the run's
// test items and fresh ones (DemoDataset.FreshItems: in no training text), 1,800 in the full run, so that a change
// of well under 1% shows (the 200 test items alone resolve 0.5%, and the tuned model gets 96-99.5% of them).
//   1. Self-Instruct (Wang et al. 2022, in the NewInputs mode a tiny model can do): from a handful of seed
//      tasks per family the tuned model answers new inputs of the seeds' shapes; the demo verifier keeps the
//      right answers only (rejection sampling), and held-out items are removed whatever the answer
//      (decontamination); a second round of LoRA tuning on the original records plus the kept ones.
//   2. Preferences: prompts answered greedily and, where wrong, again by sampling; chosen = a verified right
//      answer, rejected = the greedy mistake (DemoPreferencePairs). The prompts are the training items (each
//      once) and fresh items apart from the held-out ones: the model's mistakes on items it has seen are few and
//      mostly arithmetic facts, its mistakes on new items (format, sort) are what generalises. DPO (Rafailov et
//      al. 2023) with a fresh LoRA adapter over the tuned model with its adapter merged, so the reference
//      (adapters off) is exactly the tuned model. DPO makes DpoEpochs (3, TRL's default) passes over the pairs, at
//      most DpoMaxSteps: a tuned model right 99.5% of the time leaves 100-300 pairs, and 300 steps of 8 were 9-23
//      passes over them, after which a checkpoint had fixed 10-13 validation items and broken 37-197 others;
//      within 3 passes it breaks a few. DpoCheckpoints checkpoints, evenly over the steps, are scored on validation items
//      (fresh, apart from both), and one replaces the tuned model (step 0) only when McNemar's paired test calls
//      it better there, the best such one being kept, so the settings are chosen on data the held-out score never
//      sees. The validation set is large because DPO's effect is small next to it: a checkpoint fixes one and a
//      half to three times as many items as it breaks, a few dozen in all, and on 4,000 items (+6 -1, +8 -3)
//      McNemar's test could not tell that from chance. 32 samples per greedy mistake find a right answer for
//      1,428 of 1,818 mistakes where 8 found 1,036 (seed 0, AVX-512), so the hard mistakes give pairs too. A
//      reward model (the tuned model's trunk with LoRA and a scalar head) is trained on the same pairs; its
//      accuracy on held-out pairs.
//   3. Judge: the DPO model's held-out answers against the tuned model's, judged pairwise in both orders
//      (Vicuna / MT-bench) by the exact-match checker and by the reward model.
// The DPO and Self-Instruct models start from the same tuned model, so each is compared with it alone.
using System.Diagnostics;
using System.Globalization;
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;
using TinyLlama.Training.Demo;
using TinyLlama.Training.Judging;
using TinyLlama.Training.Lora;
using TinyLlama.Training.Preferences;
using TinyLlama.Training.SelfInstruct;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Cli.Commands;

/// <summary>The sizes of the preference stage.</summary>
internal sealed record DemoPreferenceSettings
{
    public required int SeedTasksPerFamily { get; init; }
    public required int SelfInstructCount { get; init; }
    public required int SelfInstructSteps { get; init; }
    public required int MinePromptsPerFamily { get; init; }
    /// <summary>Fresh items per family (in no training text, not test items) added to the held-out evaluation.</summary>
    public required int FreshEvalPerFamily { get; init; }
    /// <summary>Fresh items per family (disjoint from the evaluation's) added to the prompts preference pairs are mined from.</summary>
    public required int FreshMinePerFamily { get; init; }
    /// <summary>Fresh items per family (disjoint from both) on which DPO's checkpoints are compared.</summary>
    public required int FreshValidationPerFamily { get; init; }
    public int MineSamples { get; init; } = 8;
    public double MineTemperature { get; init; } = 1.0;
    /// <summary>Passes over the pairs DPO makes (TRL's default, 3), so a few hundred pairs are not drilled for thousands of steps.</summary>
    public double DpoEpochs { get; init; } = 3;
    /// <summary>The most DPO steps, whatever the number of pairs.</summary>
    public required int DpoMaxSteps { get; init; }
    /// <summary>Checkpoints scored on the validation items, evenly over the steps (see the file header for which one is kept).</summary>
    public required int DpoCheckpoints { get; init; }
    public int DpoBatch { get; init; } = 8;
    public double DpoLr { get; init; } = 2e-4;
    public double DpoBeta { get; init; } = 0.1;
    public double DpoRpoAlpha { get; init; } = 1.0;
    public required int RewardSteps { get; init; }
    public int RewardBatch { get; init; } = 8;
    public double RewardLr { get; init; } = 1e-3;

    public static DemoPreferenceSettings Full { get; } = new()
    {
        SeedTasksPerFamily = 5, SelfInstructCount = 300, SelfInstructSteps = 300,
        MinePromptsPerFamily = 7400, FreshEvalPerFamily = 400, FreshMinePerFamily = 10000, FreshValidationPerFamily = 2500,
        MineSamples = 32, DpoMaxSteps = 300, DpoCheckpoints = 6, DpoLr = 1e-4, RewardSteps = 200,
    };

    public static DemoPreferenceSettings Quick { get; } = new()
    {
        SeedTasksPerFamily = 3, SelfInstructCount = 40, SelfInstructSteps = 40,
        MinePromptsPerFamily = 100, FreshEvalPerFamily = 10, FreshMinePerFamily = 20, FreshValidationPerFamily = 5,
        MineSamples = 4, DpoMaxSteps = 20, DpoCheckpoints = 2, RewardSteps = 30,
    };
}

internal static class DemoPreferencesStage
{
    /// <summary>Exact match of the tuned model, after Self-Instruct, after DPO; the judges' verdicts and the reward model's held-out accuracy.</summary>
    internal sealed record Result(HeldOutScore Tuned, HeldOutScore SelfInstruct, HeldOutScore Dpo, PairwiseResult ExactJudge, PairwiseResult RewardJudge, double RewardAccuracy, int Pairs);

    public static Result Run(DemoSettings settings, DemoPreferenceSettings stage, ulong seed, string outPath, TextWriter output)
    {
        var total = Stopwatch.StartNew();
        var clock = Stopwatch.StartNew();
        outPath = Path.GetFullPath(outPath);
        string baseDir = Path.Combine(outPath, "base"), adapterDir = Path.Combine(outPath, "adapter"), tokenizerPath = Path.Combine(outPath, "tokenizer.json");
        if (!File.Exists(Path.Combine(baseDir, "config.json")) || !PeftAdapter.IsAdapterDirectory(adapterDir) || !File.Exists(tokenizerPath))
            throw new CliException($"--out: {outPath} holds no finished demo run (base/, adapter/, tokenizer.json); run `tinyllama demo` with the same --out, --seed and --quick first");
        var tok = LlamaTokenizer.Load(tokenizerPath);
        var data = DemoDataset.Generate(seed, settings.TrainPerFamily, settings.TestPerFamily);
        int maxTokens = settings.MaxAnswerTokens;
        output.WriteLine($"TinyLlama demo, preference stage (seed {seed}): Self-Instruct, DPO, a reward model and a pairwise judge over the instruction-tuned model in {outPath}.");
        output.WriteLine();

        // Held-out items: the run's 200 test items, and fresh ones (in no training text) where a family's item space
        // has them, so that a change of under 1% shows. Then validation items apart from those, then mining prompts
        // apart from both, each set drawn from its own seed so that one set's size does not change the others.
        var freshEval = data.FreshItems(seed ^ 0xF4E5, stage.FreshEvalPerFamily);
        var taken = freshEval.Select(t => t.ItemKey).ToHashSet(StringComparer.Ordinal);
        var validation = data.FreshItems(seed ^ 0x7A11, stage.FreshValidationPerFamily, taken);
        taken.UnionWith(validation.Select(t => t.ItemKey));
        var freshMine = data.FreshItems(seed ^ 0x313E, stage.FreshMinePerFamily, taken);
        var heldOut = data.Test.Concat(freshEval).ToList();
        var heldOutInputs = heldOut.Select(t => t.InputKey).ToHashSet(StringComparer.Ordinal);

        var tuned = LoadTuned(outPath);
        int maxLen = tuned.Config.MaxPositionEmbeddings, padId = SftDataLoader.InputPadId(tok);
        // The held-out answers are kept for the judge in step 3 (scoring and judging read the same greedy answers).
        var tunedAnswers = new List<string>();
        var tunedScore = Evaluate(tuned, tok, data.Test.Count, heldOut, maxTokens, tunedAnswers);
        output.WriteLine($"0. The instruction-tuned model answers {Cell(tunedScore.Test.Overall)} of the {data.Test.Count} test items and {Cell(tunedScore.Fresh.Overall)} of {freshEval.Count} fresh held-out items (in no training text{NoneToSpare(freshEval)}).   ({DemoCommand.Seconds(clock)})");
        output.WriteLine();

        // ---- 1. Self-Instruct ----
        clock.Restart();
        var seeds = DemoDataset.Families.SelectMany(f => data.Train.Where(t => t.Family == f).Take(stage.SeedTasksPerFamily))
            .Select(t => new InstructionRecord(t.Instruction, t.Input, t.Output)).ToList();
        var generated = SelfInstructGenerator.Run(tuned, tok, seeds, new SelfInstructOptions
        {
            Count = stage.SelfInstructCount, MaxAttempts = 3 * stage.SelfInstructCount, Mode = SelfInstructMode.NewInputs,
            MaxNewTokens = maxTokens, Seed = seed ^ 0x5E1F, Verifier = new DemoTaskVerifier(),
            Filters = new SelfInstructFilterOptions { HeldOut = r => heldOutInputs.Contains(DemoDataset.InputKey(r.Instruction, r.Input)) },
        });
        var report = generated.Report;
        output.WriteLine($"1. Self-Instruct: {seeds.Count} seed tasks ({stage.SeedTasksPerFamily} per family); the tuned model answered {report.Candidates} new inputs of their shapes, the verifier kept {report.Kept}.");
        output.WriteLine($"   Removed: {string.Join(", ", report.ByFilter.Where(f => f.Removed > 0).Select(f => $"{f.Filter} {f.Removed}"))}.");
        var sftItems = data.InstructionItems(settings.SftPerFamily);
        var records = sftItems.Select((t, i) => DemoData.Instruction(tok, t, $"record {i + 1}"))
            .Concat(generated.Records.Select((r, i) => AlpacaTemplate.Tokenize(tok, r.Instruction, r.Input, r.Output, source: $"self-instruct {i + 1}")))
            .ToList();
        var round2 = LoadTuned(outPath);
        Lora.Merge(round2);
        var rng = new Generator(seed ^ 0x2A2A);
        Lora.Apply(round2, settings.Lora, rng);
        var loader = new SftDataLoader(records, settings.SftBatch, shuffle: true, seed + 2, padId, maxLen);
        var options = new SftOptions { Steps = stage.SelfInstructSteps, Lr = settings.SftLr / 5, Warmup = Math.Max(1, stage.SelfInstructSteps / 20), Schedule = Optim.LrScheduleKind.Cosine, GradClip = 1.0 };
        DemoCommand.Train(new SftTrainer(round2, loader, options, rng: rng), stage.SelfInstructSteps, output);
        var selfScore = Evaluate(round2, tok, data.Test.Count, heldOut, maxTokens, null);
        output.WriteLine($"   A second LoRA round ({stage.SelfInstructSteps} steps) on the {sftItems.Count} original records and the {generated.Records.Count} new ones: test {Cell(tunedScore.Test.Overall)} -> {Cell(selfScore.Test.Overall)}, fresh {Cell(tunedScore.Fresh.Overall)} -> {Cell(selfScore.Fresh.Overall)}   ({DemoCommand.Seconds(clock)})");
        output.WriteLine();

        // ---- 2. preferences ----
        clock.Restart();
        // Each item once: training items repeat (arithmetic has 480, each drawn about seventeen times in the full run),
        // and a mistake on an item drawn many times would otherwise give as many copies of one pair, which DPO overfits.
        var minePrompts = DemoDataset.Families.SelectMany(f => data.Train.Where(t => t.Family == f).Skip(settings.SftPerFamily).Take(stage.MinePromptsPerFamily))
            .DistinctBy(t => t.ItemKey).Concat(freshMine).ToList();
        var mined = DemoPreferencePairs.Mine(tuned, tok, minePrompts, stage.MineSamples, stage.MineTemperature, seed ^ 0xD0D0, maxTokens);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"2. Preferences: the tuned model answered {mined.Prompts} distinct training prompts ({minePrompts.Count - freshMine.Count} from the training set, {freshMine.Count} fresh) greedily, {mined.GreedyRight} right; the {mined.Prompts - mined.GreedyRight} others up to {stage.MineSamples - 1} more times at temperature {stage.MineTemperature}: {mined.Pairs.Count} got a right answer (chosen; the greedy mistake rejected), {mined.NeverRight} none.   ({DemoCommand.Seconds(clock)})"));
        if (mined.Pairs.Count < 4) throw new CliException($"demo: only {mined.Pairs.Count} preference pairs were found (the tuned model's greedy mistakes on the training prompts that a sample gets right); nothing to tune on");
        var tokenized = PreferenceData.Tokenize(mined.Pairs, tok, maxLen);
        var (trainPairs, heldPairs) = PreferenceData.SplitValidation(tokenized.Pairs, 0.1, seed);

        clock.Restart();
        var policy = LoadTuned(outPath);
        Lora.Merge(policy); // the tuned model is now the base: with the new adapters off it is DPO's reference
        var dpoRng = new Generator(seed ^ 0xD90);
        Lora.Apply(policy, settings.Lora, dpoRng);
        var dpo = new DpoObjective(policy, new PreferenceDataLoader(tokenized.Pairs, stage.DpoBatch, shuffle: true, seed + 3), new DpoOptions(stage.DpoBeta, RpoAlpha: stage.DpoRpoAlpha), padId, maxLen);
        int dpoSteps = DpoSteps(stage, tokenized.Pairs.Count), checkpointEvery = (dpoSteps + stage.DpoCheckpoints - 1) / stage.DpoCheckpoints;
        var dpoOptions = new SftOptions { Steps = dpoSteps, Lr = stage.DpoLr, Warmup = Math.Max(1, dpoSteps / 10), Schedule = Optim.LrScheduleKind.Cosine, GradClip = 1.0 };
        var dpoTrainer = new SftTrainer(policy, dpo, dpoOptions, rng: dpoRng);
        // Checkpoints: DpoCheckpoints times, evenly, the policy answers the validation items. A checkpoint replaces
        // the tuned model (step 0: the new adapters are zero) only when it is better on them by McNemar's paired test
        // (DemoEvaluation.Compare), and then the best such checkpoint is kept (the earliest of equals): one or two
        // items either way are what a different rounding order also moves, and do not count as DPO helping.
        var start = DemoEvaluation.Correct(policy, tok, validation, maxTokens);
        int startScore = start.Count(c => c), bestStep = 0, bestValidation = startScore;
        (int Gained, int Lost, bool Better) bestCompare = (0, 0, false);
        var bestWeights = Trainable(policy);
        while (dpoTrainer.Step < dpoSteps)
        {
            DemoCommand.Train(dpoTrainer, Math.Min(dpoSteps, dpoTrainer.Step + checkpointEvery), output);
            var now = DemoEvaluation.Correct(policy, tok, validation, maxTokens);
            var compare = DemoEvaluation.Compare(start, now);
            int score = now.Count(c => c);
            output.WriteLine($"   step {dpoTrainer.Step}: validation {score}/{validation.Count} (+{compare.Gained} -{compare.Lost} against step 0{(compare.Better ? ", better by McNemar's test" : "")})");
            if (!compare.Better || score <= bestValidation) continue;
            (bestStep, bestValidation, bestCompare, bestWeights) = (dpoTrainer.Step, score, compare, Trainable(policy));
        }
        policy.LoadStateDict(bestWeights, strict: false);
        output.WriteLine(bestStep == 0
            ? $"   Kept step 0, the tuned model ({startScore}/{validation.Count} on the validation items, fresh, apart from the held-out and mining ones): no checkpoint was better by McNemar's test."
            : $"   Kept step {bestStep}: validation exact match {startScore}/{validation.Count} at step 0, {bestValidation}/{validation.Count} there (+{bestCompare.Gained} -{bestCompare.Lost}; {validation.Count} fresh items apart from the held-out and mining ones).");
        var last = dpoTrainer.History.TakeLast(Math.Max(1, dpoSteps / 10)).ToList();
        double Metric(string name) => last.Average(h => h.Metrics is { } m && m.TryGetValue(name, out var v) ? v : double.NaN);
        var dpoAnswers = new List<string>();
        var dpoScore = Evaluate(policy, tok, data.Test.Count, heldOut, maxTokens, dpoAnswers);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"   DPO (beta {stage.DpoBeta}, RPO alpha {stage.DpoRpoAlpha}, rank-{settings.LoraRank} LoRA over the tuned model, {dpoSteps} steps of {stage.DpoBatch} pairs: {stage.DpoEpochs} passes over {tokenized.Pairs.Count} pairs, at most {stage.DpoMaxSteps}; lr {stage.DpoLr}): loss {dpoTrainer.History[0].Loss:F3} -> {last.Average(h => h.Loss):F3}, reward margin {Metric("rewards/margins"):F2}, pair accuracy {100 * Metric("rewards/accuracies"):F0}% (last {last.Count} steps)."));
        output.WriteLine($"   Held-out exact match: test {Cell(tunedScore.Test.Overall)} -> {Cell(dpoScore.Test.Overall)}, fresh {Cell(tunedScore.Fresh.Overall)} -> {Cell(dpoScore.Fresh.Overall)}, all {Cell(tunedScore.All.Overall)} -> {Cell(dpoScore.All.Overall)}   ({DemoCommand.Seconds(clock)})");

        clock.Restart();
        var trunk = LoadTuned(outPath);
        Lora.Merge(trunk);
        var rewardRng = new Generator(seed ^ 0x4E4D);
        Lora.Apply(trunk, settings.Lora, rewardRng);
        var reward = new RewardModel(trunk, rewardRng);
        var rewardOptions = new SftOptions { Steps = stage.RewardSteps, Lr = stage.RewardLr, Warmup = Math.Max(1, stage.RewardSteps / 10), Schedule = Optim.LrScheduleKind.Cosine, GradClip = 1.0 };
        var rewardTrainer = new SftTrainer(reward, new RewardObjective(reward, new PreferenceDataLoader(trainPairs, stage.RewardBatch, shuffle: true, seed + 4), padId, maxLen), rewardOptions, rng: rewardRng);
        DemoCommand.Train(rewardTrainer, stage.RewardSteps, output);
        reward.Eval();
        var (heldLoss, heldAccuracy) = heldPairs.Count > 0 ? RewardObjective.Evaluate(reward, heldPairs, stage.RewardBatch, padId, maxLen) : (double.NaN, double.NaN);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"   Reward model (the tuned model's trunk, rank-{settings.LoraRank} LoRA, a scalar head; {stage.RewardSteps} steps on {trainPairs.Count} pairs): held-out pair accuracy {100 * heldAccuracy:F0}% on {heldPairs.Count} pairs (loss {heldLoss:F3})   ({DemoCommand.Seconds(clock)})"));
        output.WriteLine();

        // ---- 3. judge ----
        clock.Restart();
        var questions = heldOut.Select((t, i) => new JudgeQuestion(i < data.Test.Count ? $"test {i + 1}" : $"fresh {i + 1 - data.Test.Count}", AlpacaTemplate.Prompt(t.Instruction, t.Input), t.Answer)).ToList();
        var a = questions.Select((q, i) => (q.Id, dpoAnswers[i])).ToDictionary(p => p.Id, p => p.Item2);
        var b = questions.Select((q, i) => (q.Id, tunedAnswers[i])).ToDictionary(p => p.Id, p => p.Item2);
        var exact = PairwiseJudging.Run(new ExactMatchJudge(questions), questions, a, b);
        var scorer = new RewardScorer(reward, tok, maxLen);
        // The reward model scores a response as the training pairs wrote it: after the prompt, with a leading space.
        var byReward = PairwiseJudging.Run(new ScoreJudge("reward model", (q, answer) => scorer.Score(q, " " + answer)), questions, a, b);
        output.WriteLine($"3. Pairwise judge, DPO model (A) against the tuned model (B) on the {questions.Count} held-out questions (test and fresh), each pair judged in both orders (a verdict counts only when both agree):");
        output.WriteLine($"   {"judge",-14}{"DPO wins",10}{"ties",8}{"tuned wins",12}{"inconsistent",14}");
        foreach (var (name, r) in new[] { ("exact match", exact), ("reward model", byReward) })
            output.WriteLine($"   {name,-14}{r.Wins,10}{r.Ties,8}{r.Losses,12}{r.Inconsistent,14}");
        output.WriteLine($"   Exact match next to it: tuned {Cell(tunedScore.All.Overall)}, DPO {Cell(dpoScore.All.Overall)}, Self-Instruct round {Cell(selfScore.All.Overall)}.   ({DemoCommand.Seconds(clock)})");
        output.WriteLine();
        output.WriteLine("   test / fresh   tuned                       Self-Instruct               DPO");
        foreach (var f in DemoDataset.Families)
            output.WriteLine($"   {f,-14} {Pair(tunedScore, f),-27} {Pair(selfScore, f),-27} {Pair(dpoScore, f)}");
        output.WriteLine($"Done in {DemoCommand.Seconds(total)}.");
        return new Result(tunedScore, selfScore, dpoScore, exact, byReward, heldAccuracy, mined.Pairs.Count);
    }

    /// <summary>
    /// DPO's steps: <see cref="DemoPreferenceSettings.DpoEpochs"/> passes over <paramref name="pairs"/> pairs, at most
    /// <see cref="DemoPreferenceSettings.DpoMaxSteps"/>, at least one step per checkpoint.
    /// </summary>
    internal static int DpoSteps(DemoPreferenceSettings stage, int pairs) =>
        (int)Math.Clamp(Math.Ceiling(stage.DpoEpochs * pairs / stage.DpoBatch), stage.DpoCheckpoints, stage.DpoMaxSteps);

    /// <summary>Exact match on the test items (the first <c>testCount</c> of the held-out items), on the fresh ones, and on all.</summary>
    internal sealed record HeldOutScore(DemoScore Test, DemoScore Fresh, DemoScore All);

    private static HeldOutScore Evaluate(LlamaForCausalLM model, LlamaTokenizer tok, int testCount, IReadOnlyList<DemoTask> heldOut, int maxTokens, List<string>? answers)
    {
        var test = new DemoScore();
        var fresh = new DemoScore();
        int i = 0;
        var all = DemoEvaluation.Evaluate(model, tok, heldOut, maxTokens, (task, answer) =>
        {
            (i++ < testCount ? test : fresh).Add(task.Family, answer == task.Answer);
            answers?.Add(answer);
        });
        return new HeldOutScore(test, fresh, all);
    }

    // "; arithmetic has none to spare" for the families without fresh items (all their items are training or test items).
    private static string NoneToSpare(IReadOnlyList<DemoTask> fresh)
    {
        var none = DemoDataset.Families.Where(f => !fresh.Any(t => t.Family == f)).ToList();
        return none.Count == 0 ? "" : $"; {string.Join(" and ", none)} {(none.Count == 1 ? "has" : "have")} none to spare";
    }

    // Copies of the trainable parameters (the adapters), by name, to restore a checkpoint with LoadStateDict.
    private static Dictionary<string, Tensor> Trainable(LlamaForCausalLM model) =>
        model.NamedParameters().Where(p => p.Value.RequiresGrad).ToDictionary(p => p.Name, p => p.Value.Detach().Clone());

    private static string Pair(HeldOutScore s, string family) =>
        string.Create(CultureInfo.InvariantCulture, $"{s.Test.Family(family).Correct}/{s.Test.Family(family).Total} {s.Fresh.Family(family).Correct}/{s.Fresh.Family(family).Total}");

    // The demo's instruction-tuned model: its base with its adapter on, in eval mode.
    private static LlamaForCausalLM LoadTuned(string outPath) =>
        ModelCommands.LoadModel(Path.Combine(outPath, "adapter"), new ModelFiles());

    private static string Cell((int Correct, int Total) x) => string.Create(CultureInfo.InvariantCulture, $"{x.Correct}/{x.Total} {100 * DemoScore.Accuracy(x):F1}%");
}
