// The trainer: a 3-step full fine-tune of tiny-random-llama against the PyTorch reference (per-step
// losses and final weight sums), exact resume (N straight == N/2 + save + resume + N/2, bit for bit),
// and the loss counting only unmasked targets.
using System.Text.Json;
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Tokenizers;
using TinyLlama.Training;
using TinyLlama.Training.Data;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Tests.Training;

public class SftTrainerTests
{
    [SkippableFact]
    public void ThreeStepFullFineTuneMatchesPyTorch()
    {
        var dir = SharedData.Require("tiny-random-llama");
        var expected = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "expected.json"))).RootElement.GetProperty("sft");
        var ckpt = Checkpoint.Load(dir);
        var model = LlamaForCausalLM.FromWeights(ckpt.Config, ckpt.Weights);
        var tokenizer = LlamaTokenizer.Load(Path.Combine(dir, "tokenizer.model"));
        var data = SftDataset.Load(Path.Combine(dir, expected.GetProperty("data").GetString()!), "alpaca", tokenizer, maxLength: 512);
        var loader = new SftDataLoader(data.Examples, expected.GetProperty("batch_size").GetInt32(), shuffle: false, seed: 0, SftDataLoader.InputPadId(tokenizer), 512);
        var trainer = new SftTrainer(model, loader, new SftOptions { Steps = expected.GetProperty("steps").GetInt32(), Lr = expected.GetProperty("lr").GetDouble() });
        var losses = expected.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        for (int i = 0; i < losses.Length; i++)
        {
            double loss = trainer.TrainStep().Loss;
            Assert.True(Math.Abs(loss - losses[i]) <= 1e-4 * losses[i], $"step {i + 1}: loss {loss} vs PyTorch {losses[i]}");
        }
        var weights = model.StateDict();
        foreach (var item in expected.GetProperty("final_weights").EnumerateObject())
        {
            var w = weights[item.Name].ToArray<double>();
            double sum = w.Sum(), abs = w.Sum(Math.Abs);
            double refSum = item.Value.GetProperty("sum").GetDouble(), refAbs = item.Value.GetProperty("abs_sum").GetDouble();
            // Sums of ~10^4 f32 weights moved by three Adam steps: f32 rounding of each element (~6e-8
            // relative) summed over the tensor bounds the difference well below 1e-5 of the absolute sum.
            Assert.True(Math.Abs(abs - refAbs) <= 1e-5 * refAbs, $"{item.Name}: abs sum {abs} vs {refAbs}");
            Assert.True(Math.Abs(sum - refSum) <= 1e-5 * refAbs, $"{item.Name}: sum {sum} vs {refSum}");
        }
    }

    internal static List<SftExample> SyntheticExamples(int count, int vocab, int seed)
    {
        var gen = new Generator((ulong)seed);
        var list = new List<SftExample>();
        for (int i = 0; i < count; i++)
        {
            int len = 6 + gen.NextInt(8), prompt = 2 + gen.NextInt(3);
            var ids = new int[len];
            ids[0] = 1;
            for (int j = 1; j < len; j++) ids[j] = 3 + gen.NextInt(vocab - 3);
            var labels = ids.Select((id, j) => j < prompt ? TrainingInfo.IgnoreIndex : id).ToArray();
            list.Add(new SftExample(ids, labels, $"synthetic:{i + 1}"));
        }
        return list;
    }

    private static (SftTrainer Trainer, LlamaForCausalLM Model) NewRun(List<SftExample> examples, SftOptions options)
    {
        var model = new LlamaForCausalLM(Tests.Model.LlamaTests.Tiny(), new Generator(11));
        var loader = new SftDataLoader(examples, 3, shuffle: true, seed: 5, padId: 0, maxLength: 32);
        return (new SftTrainer(model, loader, options), model);
    }

    [Fact]
    public void ResumeFollowsTheUninterruptedTrajectoryBitForBit()
    {
        var examples = SyntheticExamples(7, 37, 1);
        var options = new SftOptions { Steps = 6, Lr = 3e-3, Warmup = 2, Schedule = LrScheduleKind.Cosine, WeightDecay = 0.01, GradClip = 1.0, GradAccum = 2 };
        var (straight, _) = NewRun(examples, options);
        var straightLosses = Enumerable.Range(0, 6).Select(_ => straight.TrainStep().Loss).ToArray();

        var dir = Directory.CreateTempSubdirectory("tinyllama-resume-");
        try
        {
            var ckptDir = Path.Combine(dir.FullName, "checkpoint");
            var (first, _) = NewRun(examples, options);
            var firstHalf = Enumerable.Range(0, 3).Select(_ => first.TrainStep().Loss).ToArray();
            first.SaveCheckpoint(ckptDir);
            first.SaveCheckpoint(ckptDir); // saving over an existing checkpoint replaces it
            var (second, _) = NewRun(examples, options);
            second.LoadCheckpoint(ckptDir);
            Assert.Equal(3, second.Step);
            Assert.Equal(3, second.History.Count);
            var secondHalf = Enumerable.Range(0, 3).Select(_ => second.TrainStep().Loss).ToArray();
            Assert.Equal(straightLosses, firstHalf.Concat(secondHalf).ToArray());
            Assert.Empty(Directory.GetDirectories(dir.FullName, ".checkpoint*"));
        }
        finally { dir.Delete(true); }
    }

    [Fact]
    public void LossCountsOnlyUnmaskedTargets()
    {
        var examples = SyntheticExamples(2, 37, 2);
        var model = new LlamaForCausalLM(Tests.Model.LlamaTests.Tiny(), new Generator(3));
        var batch = SftDataLoader.Collate(examples, 0, 32);
        // Manual mean over the positions whose target is not masked, from the model's logits.
        var logits = model.Forward(batch.InputIds).ToArray<float>();
        var t = batch.Targets.ToArray<int>();
        int v = model.Config.VocabSize;
        double sum = 0;
        int count = 0;
        for (int i = 0; i < t.Length; i++)
        {
            if (t[i] == TrainingInfo.IgnoreIndex) continue;
            var row = logits.AsSpan(i * v, v).ToArray();
            double max = row.Max(), z = row.Sum(x => Math.Exp(x - max));
            sum += max + Math.Log(z) - row[t[i]];
            count++;
        }
        Assert.Equal(count, batch.TargetCount);
        double trainerLoss = new CrossEntropyLoss().SumLoss(model, batch).Item() / batch.TargetCount;
        Assert.Equal(sum / count, trainerLoss, 5);
        // Changing one response target changes the loss (the check above is not vacuous).
        var altered = batch.Targets.ToArray<int>();
        int firstResponse = Array.FindIndex(altered, x => x != TrainingInfo.IgnoreIndex);
        altered[firstResponse] = (altered[firstResponse] + 1) % v;
        var changed = new SftBatch { InputIds = batch.InputIds, Targets = Tensor.FromArray(altered, batch.Targets.Shape), TargetCount = batch.TargetCount, Sources = batch.Sources, Lengths = batch.Lengths };
        Assert.NotEqual(trainerLoss, new CrossEntropyLoss().SumLoss(model, changed).Item() / batch.TargetCount);
    }

    [Fact]
    public void PaddingDoesNotChangeAnExamplesLoss()
    {
        // A short example batched with a longer one is right-padded; its summed loss must be the same
        // as when it is alone (padding targets are masked and padding comes after it causally).
        var examples = SyntheticExamples(12, 37, 4).OrderBy(e => e.InputIds.Length).ToList();
        var shortest = examples[0];
        var longest = examples[^1];
        Assert.True(longest.InputIds.Length > shortest.InputIds.Length);
        var model = new LlamaForCausalLM(Tests.Model.LlamaTests.Tiny(), new Generator(6));
        var loss = new CrossEntropyLoss();
        using var _ = GradMode.NoGrad();
        double alone = loss.SumLoss(model, SftDataLoader.Collate([shortest], 0, 32)).Item();
        double other = loss.SumLoss(model, SftDataLoader.Collate([longest], 0, 32)).Item();
        var padded = SftDataLoader.Collate([shortest, longest], 0, 32);
        Assert.Equal(longest.InputIds.Length - 1, padded.SequenceLength);
        Assert.Equal(alone + other, loss.SumLoss(model, padded).Item(), 4);
    }
}
