// Issue 13, training and checkpoints: a diverging step (NaN loss at step k, an infinite or NaN gradient
// norm) stops with the step and the value and leaves the last checkpoint loadable and exact; every
// option outside its range is refused; each kind of checkpoint corruption is refused with one line
// naming the file; an interrupted checkpoint switch is recovered (newest complete copy) and stale
// temporaries are removed; a failed save keeps the previous checkpoint.
using System.Text.Json.Nodes;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Training.Data;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Tests.Training;

public class TrainerReliabilityTests
{
    private static readonly SftOptions Options = new() { Steps = 6, Lr = 3e-3, Warmup = 2, Schedule = LrScheduleKind.Cosine, WeightDecay = 0.01, GradClip = 1.0 };

    private static SftTrainer NewTrainer(SftOptions? options = null, ITrainingLoss? loss = null, ICollective? collective = null)
    {
        var examples = SftTrainerTests.SyntheticExamples(7, 37, 1);
        var model = new LlamaForCausalLM(Tests.Model.LlamaTests.Tiny(), new Generator(11));
        var loader = new SftDataLoader(examples, 3, shuffle: true, seed: 5, padId: 0, maxLength: 32);
        return new SftTrainer(model, loader, options ?? Options, loss, collective, rng: new Generator(7));
    }

    /// <summary>Cross-entropy, times NaN from the given step on (a forward pass that went non-finite).</summary>
    private sealed class NaNFromStep(int step, int microBatchesPerStep) : ITrainingLoss
    {
        private int calls;
        public string Name => "nan-from-step";
        public Tensor SumLoss(LlamaForCausalLM model, SftBatch batch)
        {
            var s = new CrossEntropyLoss().SumLoss(model, batch);
            return calls++ / microBatchesPerStep + 1 >= step ? s * double.NaN : s;
        }
    }

    /// <summary>A collective that puts <paramref name="value"/> into every gradient at the given step (an overflow on another rank).</summary>
    private sealed class PoisonGradientsAt(int step, double value) : ICollective
    {
        private int calls;
        public int Rank => 0;
        public int WorldSize => 1;
        public void AllReduceSum(Span<double> values) { }
        public void AllReduceGradients(IReadOnlyList<Tensor> gradients)
        {
            if (++calls != step) return;
            foreach (var g in gradients) g.Add_(Tensor.Full(g.Shape, value, g.DType));
        }
    }

    private static DirectoryInfo TempDir() => Directory.CreateTempSubdirectory("tinyllama-rel-");

    // ---------------- diverging training ----------------

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void NaNLossAtStepKStopsThereAndTheLastCheckpointResumesExactly(int k)
    {
        var straight = NewTrainer();
        var straightLosses = Enumerable.Range(0, 6).Select(_ => straight.TrainStep().Loss).ToArray();
        var dir = TempDir();
        try
        {
            var ckpt = Path.Combine(dir.FullName, "checkpoint");
            var run = NewTrainer(loss: new NaNFromStep(k, 1));
            var losses = new List<double>();
            for (int i = 1; i < k; i++) losses.Add(run.TrainStep().Loss);
            run.SaveCheckpoint(ckpt);
            var e = Assert.Throws<TrainingDivergedException>(() => run.TrainStep());
            Assert.Equal(k, e.Step);
            Assert.Equal("loss", e.Quantity);
            Assert.True(double.IsNaN(e.Value));
            Assert.Contains($"step {k}", e.Message);
            Assert.Contains("NaN", e.Message);
            Assert.Equal(k - 1, run.Step);         // the diverged step is not counted
            Assert.Equal(k - 1, run.History.Count);
            // The checkpoint from before the divergence is whole and continues the uninterrupted run.
            var resumed = NewTrainer();
            resumed.LoadCheckpoint(ckpt);
            while (resumed.Step < 6) losses.Add(resumed.TrainStep().Loss);
            Assert.Equal(straightLosses, losses.ToArray());
            Assert.Empty(CheckpointDirectory.Leftovers(ckpt));
        }
        finally { dir.Delete(true); }
    }

    [Theory]
    [InlineData(double.PositiveInfinity, 0.0)] // no clipping: the norm is computed only to notice this
    [InlineData(double.PositiveInfinity, 1.0)]
    [InlineData(double.NaN, 1.0)]
    public void NonFiniteGradientNormStopsTheRun(double poison, double clip)
    {
        var run = NewTrainer(Options with { GradClip = clip }, collective: new PoisonGradientsAt(2, poison));
        var first = run.TrainStep();
        Assert.True(double.IsFinite(first.GradNorm) && first.GradNorm > 0, $"step 1 norm {first.GradNorm}");
        var e = Assert.Throws<TrainingDivergedException>(() => run.TrainStep());
        Assert.Equal(2, e.Step);
        Assert.Equal("gradient norm", e.Quantity);
        Assert.Equal(double.IsNaN(poison), double.IsNaN(e.Value));
        Assert.False(double.IsFinite(e.Value));
        Assert.Equal(1, run.Step);
    }

    [Fact]
    public void GlobalNormOnDeviceIsTheL2NormAndLeavesGradientsAlone()
    {
        var a = Tensor.Zeros([2]);
        var b = Tensor.Zeros([1, 2]);
        var none = Tensor.Zeros([3]); // no gradient: counts as zero
        a.Grad = Tensor.FromDoubles([3, -4], [2]);
        b.Grad = Tensor.FromDoubles([12, 0], [1, 2]);
        Assert.Equal(13.0, GradClip.GlobalNormOnDevice([a, b, none]).Item(), 12); // sqrt(9 + 16 + 144)
        Assert.Equal([3f, -4f], a.Grad.ToArray<float>());
        Assert.Equal(0.0, GradClip.GlobalNormOnDevice([none]).Item());
        // Without clipping the trainer now reports the norm it checks (it was NaN, "not computed").
        var log = NewTrainer(Options with { GradClip = 0 }).TrainStep();
        Assert.True(double.IsFinite(log.GradNorm) && log.GradNorm > 0, $"norm {log.GradNorm}");
    }

    [Fact]
    public void F16LossScalingSkipsAnOverflowInsteadOfStopping()
    {
        var run = NewTrainer(Options with { ComputeDType = DType.F16 }, collective: new PoisonGradientsAt(2, double.PositiveInfinity));
        run.TrainStep();
        double scale = run.LossScale;
        var second = run.TrainStep();
        Assert.True(second.Skipped);
        Assert.Equal(scale / 2, run.LossScale);
        Assert.False(run.TrainStep().Skipped);
    }

    public static TheoryData<string, SftOptions> BadOptions() => new()
    {
        { "lr", Options with { Lr = 0 } },
        { "lr", Options with { Lr = -1e-3 } },
        { "lr", Options with { Lr = double.NaN } },
        { "lr", Options with { Lr = double.PositiveInfinity } },
        { "steps", Options with { Steps = -1 } },
        { "warmup", Options with { Warmup = -1 } },
        { "weight decay", Options with { WeightDecay = -0.1 } },
        { "weight decay", Options with { WeightDecay = double.NaN } },
        { "grad clip", Options with { GradClip = double.NaN } },
        { "grad clip", Options with { GradClip = -1 } },
        { "grad-accum", Options with { GradAccum = 0 } },
        { "beta1", Options with { Beta1 = 1 } },
        { "beta2", Options with { Beta2 = double.NaN } },
        { "eps", Options with { Eps = 0 } },
        { "compute dtype", Options with { ComputeDType = DType.I32 } },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public void OptionsOutOfRangeAreRefused(string name, SftOptions options)
    {
        var e = Assert.Throws<ArgumentException>(() => NewTrainer(options));
        Assert.StartsWith(name, e.Message);
    }

    // ---------------- checkpoint corruption ----------------

    private static void EditTensors(string file, Action<Dictionary<string, Tensor>> edit)
    {
        var tensors = SafetensorsFile.Open(file).GetAll().ToDictionary(kv => kv.Key, kv => kv.Value.Clone());
        edit(tensors);
        Safetensors.Save(file, tensors);
    }

    private static void EditState(string file, Action<JsonObject> edit)
    {
        var state = JsonNode.Parse(File.ReadAllText(file))!.AsObject();
        edit(state);
        File.WriteAllText(file, state.ToJsonString());
    }

    private static Tensor WithValue(Tensor t, double value)
    {
        var v = t.ToArray<double>();
        v[v.Length / 2] = value;
        return Tensor.FromDoubles(v, t.Shape).To(t.DType);
    }

    private const string P = "model.layers.0.self_attn.q_proj.weight";

    // (file, edit, words the message must contain)
    public static TheoryData<string, string, string> Corruptions() => new()
    {
        { "trainable.safetensors", "param-dtype", "dtype float16, expected float32" },
        { "trainable.safetensors", "param-shape", "shape" },
        { "trainable.safetensors", "param-missing", "is missing" },
        { "trainable.safetensors", "param-extra", "unexpected tensor" },
        { "trainable.safetensors", "param-nan", "finite" },
        { "optimizer.safetensors", "m-missing", "moment 'm." },
        { "optimizer.safetensors", "v-missing", "moment 'v." },
        { "optimizer.safetensors", "moment-dtype", "dtype float64, expected float32" },
        { "optimizer.safetensors", "v-negative", "second moment" },
        { "optimizer.safetensors", "m-inf", "finite" },
        { "trainer_state.json", "step-beyond-run", "beyond this run's 6 steps" },
        { "trainer_state.json", "step-negative", "\"step\"" },
        { "trainer_state.json", "step-history-mismatch", "entries for step" },
        { "trainer_state.json", "optimizer-step", "\"optimizer_step\"" },
        { "trainer_state.json", "loss-scale", "f16 run" },
        { "trainer_state.json", "compute-dtype", "trained in bfloat16" },
        { "trainer_state.json", "rng-missing", "\"rng\" is missing" },
        { "trainer_state.json", "rng-short", "words" },
        { "trainer_state.json", "rng-zero", "all-zero" },
        { "trainer_state.json", "rng-text", "decimal strings" },
        { "trainer_state.json", "data-position", "position" },
        { "trainer_state.json", "history-loss-string", "history[1].loss" },
        { "trainer_state.json", "validation-step", "validation entry" },
        { "trainer_state.json", "malformed", "malformed JSON" },
        { "trainer_state.json", "invalid-utf8", "malformed JSON" },
        { "trainer_state.json", "lone-surrogate", "unreadable" },
        { "trainer_state.json", "deleted", "not a training checkpoint" },
    };

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void CorruptCheckpointIsRefusedWithOneLineNamingTheFile(string file, string kind, string expected)
    {
        var dir = TempDir();
        try
        {
            var ckpt = Path.Combine(dir.FullName, "checkpoint");
            var run = NewTrainer();
            run.TrainStep();
            run.TrainStep();
            run.ValidationHistory.Add((2, 3.5));
            run.SaveCheckpoint(ckpt);
            string path = Path.Combine(ckpt, file);
            Action<JsonObject> state = kind switch
            {
                "step-beyond-run" => s => { s["step"] = 7; },
                "step-negative" => s => { s["step"] = -1; },
                "step-history-mismatch" => s => { s["step"] = 3; },
                "optimizer-step" => s => { s["optimizer_step"] = 1; },
                "loss-scale" => s => { s["loss_scale"] = 1024.0; },
                "compute-dtype" => s => { s["compute_dtype"] = "bf16"; },
                "rng-missing" => s => { s["rng"] = null; },
                "rng-short" => s => { s["rng"] = new JsonArray("1", "2"); },
                "rng-zero" => s => { s["rng"] = new JsonArray("0", "0", "0", "0", "0", "0"); },
                "rng-text" => s => { s["rng"]![0] = "x"; },
                "data-position" => s => { s["data"]!["position"] = 99; },
                "history-loss-string" => s => { s["history"]![1]!["loss"] = "low"; },
                "validation-step" => s => { s["validation"]![0]!["step"] = 9; },
                _ => _ => { },
            };
            switch (kind)
            {
                case "param-dtype": EditTensors(path, t => t[P] = t[P].To(DType.F16)); break;
                case "param-shape": EditTensors(path, t => t[P] = Tensor.Zeros([3, 3])); break;
                case "param-missing": EditTensors(path, t => t.Remove(P)); break;
                case "param-extra": EditTensors(path, t => t["model.extra.weight"] = Tensor.Zeros([2])); break;
                case "param-nan": EditTensors(path, t => t[P] = WithValue(t[P], double.NaN)); break;
                case "m-missing": EditTensors(path, t => t.Remove("m." + P)); break;
                case "v-missing": EditTensors(path, t => t.Remove("v." + P)); break;
                case "moment-dtype": EditTensors(path, t => t["m." + P] = t["m." + P].To(DType.F64)); break;
                case "v-negative": EditTensors(path, t => t["v." + P] = WithValue(t["v." + P], -1e-3)); break;
                case "m-inf": EditTensors(path, t => t["m." + P] = WithValue(t["m." + P], double.PositiveInfinity)); break;
                case "malformed": File.WriteAllText(path, "{\"step\": 2,"); break;
                case "invalid-utf8": File.WriteAllBytes(path, [.. "{\"step\": \""u8, 0xC3, 0x28, .. "\"}"u8]); break;
                case "lone-surrogate": EditState(path, s => { }); File.WriteAllText(path, File.ReadAllText(path).Replace("\"float32\"", "\"\\ud800\"")); break;
                case "deleted": File.Delete(path); break;
                default: EditState(path, state); break;
            }
            var fresh = NewTrainer();
            var e = Assert.Throws<InvalidDataException>(() => fresh.LoadCheckpoint(ckpt));
            Assert.DoesNotContain('\n', e.Message);
            Assert.Contains(kind == "deleted" ? ckpt : path, e.Message);
            Assert.True(e.Message.Contains(expected, StringComparison.Ordinal), e.Message);
            Assert.Equal(0, fresh.Step); // refused before anything changed
            Assert.Empty(fresh.History);
        }
        finally { dir.Delete(true); }
    }

    [Fact]
    public void UncorruptedCheckpointOfTheCorruptionTestLoads()
    {
        // The corruption cases start from this checkpoint: it must load, or they prove nothing.
        var dir = TempDir();
        try
        {
            var ckpt = Path.Combine(dir.FullName, "checkpoint");
            var run = NewTrainer();
            run.TrainStep();
            run.TrainStep();
            run.ValidationHistory.Add((2, 3.5));
            run.SaveCheckpoint(ckpt);
            var fresh = NewTrainer();
            fresh.LoadCheckpoint(ckpt);
            Assert.Equal(2, fresh.Step);
            Assert.Equal(run.History.Select(h => h.Loss), fresh.History.Select(h => h.Loss));
            Assert.Equal([(2, 3.5)], fresh.ValidationHistory);
        }
        finally { dir.Delete(true); }
    }

    // ---------------- the checkpoint switch ----------------

    /// <summary>
    /// Builds the state a kill between the two renames leaves: no checkpoint/, the previous copy (step 2) as
    /// .checkpoint.old-N and, when <paramref name="newCopyComplete"/>, the finished new copy (step 4) as
    /// .checkpoint.tmp-N (else a half-written one).
    /// </summary>
    private static void InterruptedSwitch(string ckpt, bool newCopyComplete)
    {
        var run = NewTrainer();
        run.TrainStep();
        run.TrainStep();
        run.SaveCheckpoint(ckpt);
        string parent = Path.GetDirectoryName(ckpt)!;
        Directory.Move(ckpt, Path.Combine(parent, ".checkpoint.old-4242"));
        run.TrainStep();
        run.TrainStep();
        var newer = Path.Combine(parent, "newer");
        run.SaveCheckpoint(newer);
        if (!newCopyComplete) File.Delete(Path.Combine(newer, "trainer_state.json"));
        Directory.Move(newer, Path.Combine(parent, ".checkpoint.tmp-4243"));
    }

    [Theory]
    [InlineData(true, 4)]  // the finished new copy is promoted
    [InlineData(false, 2)] // a half-written new copy is dropped and the backup restored
    public void ResumeBetweenTheTwoRenamesRecoversAndContinuesExactly(bool newCopyComplete, int expectedStep)
    {
        var straight = NewTrainer();
        var straightLosses = Enumerable.Range(0, 6).Select(_ => straight.TrainStep().Loss).ToArray();
        var dir = TempDir();
        try
        {
            var ckpt = Path.Combine(dir.FullName, "checkpoint");
            InterruptedSwitch(ckpt, newCopyComplete);
            Assert.False(Directory.Exists(ckpt));
            var resumed = NewTrainer();
            resumed.LoadCheckpoint(ckpt);
            Assert.Equal(expectedStep, resumed.Step);
            Assert.True(Directory.Exists(ckpt));
            Assert.Empty(CheckpointDirectory.Leftovers(ckpt));
            var losses = resumed.History.Select(h => h.Loss).ToList();
            while (resumed.Step < 6) losses.Add(resumed.TrainStep().Loss);
            Assert.Equal(straightLosses, losses.ToArray());
        }
        finally { dir.Delete(true); }
    }

    [Fact]
    public void StaleTemporariesBesideAGoodCheckpointAreRemovedBySave()
    {
        var dir = TempDir();
        try
        {
            var ckpt = Path.Combine(dir.FullName, "checkpoint");
            var run = NewTrainer();
            run.TrainStep();
            run.SaveCheckpoint(ckpt);
            Directory.CreateDirectory(Path.Combine(dir.FullName, ".checkpoint.tmp-1"));
            File.WriteAllText(Path.Combine(dir.FullName, ".checkpoint.tmp-1", "trainable.safetensors"), "half");
            Directory.CreateDirectory(Path.Combine(dir.FullName, ".checkpoint.old-2"));
            Directory.CreateDirectory(Path.Combine(dir.FullName, ".other.tmp-3")); // not ours: kept
            Assert.Equal(2, CheckpointDirectory.Leftovers(ckpt).Count);
            run.TrainStep();
            run.SaveCheckpoint(ckpt);
            Assert.Empty(CheckpointDirectory.Leftovers(ckpt));
            Assert.True(Directory.Exists(Path.Combine(dir.FullName, ".other.tmp-3")));
            var fresh = NewTrainer();
            fresh.LoadCheckpoint(ckpt);
            Assert.Equal(2, fresh.Step);
        }
        finally { dir.Delete(true); }
    }

    [Fact]
    public void FailedSaveKeepsThePreviousCheckpointAndLeavesNoTemporary()
    {
        var dir = TempDir();
        try
        {
            var ckpt = Path.Combine(dir.FullName, "checkpoint");
            var run = NewTrainer();
            run.TrainStep();
            run.SaveCheckpoint(ckpt);
            // A full disk in the middle of writing the new copy.
            Assert.Throws<IOException>(() => CheckpointDirectory.Commit(ckpt, SftTrainer.CheckpointFiles, tmp =>
            {
                File.WriteAllText(Path.Combine(tmp, "trainable.safetensors"), "partial");
                throw new IOException("No space left on device");
            }));
            Assert.Empty(CheckpointDirectory.Leftovers(ckpt));
            var fresh = NewTrainer();
            fresh.LoadCheckpoint(ckpt);
            Assert.Equal(1, fresh.Step);
        }
        finally { dir.Delete(true); }
    }
}
