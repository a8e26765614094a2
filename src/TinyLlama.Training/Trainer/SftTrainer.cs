// The supervised fine-tuning loop, one optimizer step at a time:
//   lr <- schedule(step)
//   for each of K micro-batches:  (sum of token losses * scale / N).Backward()   (N = targets in the step)
//   all-reduce gradients (data-parallel seam) -> unscale (f16) -> skip on overflow -> clip -> AdamW
// Everything a resumed run needs (parameters, AdamW moments, step, loss scale, data position, RNG)
// is saved by SaveCheckpoint and restored by LoadCheckpoint, so a resumed run follows the same
// trajectory bit for bit on the CPU.
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Training.Data;

namespace TinyLlama.Training.Trainer;

/// <summary>Settings of a fine-tuning run (the sft verb's flags).</summary>
public sealed record SftOptions
{
    /// <summary>Optimizer steps to run in total.</summary>
    public required int Steps { get; init; }
    /// <summary>Peak learning rate.</summary>
    public required double Lr { get; init; }
    /// <summary>Linear warmup steps.</summary>
    public int Warmup { get; init; }
    /// <summary>Shape after warmup.</summary>
    public LrScheduleKind Schedule { get; init; } = LrScheduleKind.Constant;
    /// <summary>Decoupled weight decay (0 = off).</summary>
    public double WeightDecay { get; init; }
    /// <summary>Maximum global gradient norm (0 = no clipping).</summary>
    public double GradClip { get; init; }
    /// <summary>Micro-batches per optimizer step.</summary>
    public int GradAccum { get; init; } = 1;
    /// <summary>F32, or BF16/F16 for autocast mixed precision (f32 master weights; f16 adds loss scaling).</summary>
    public DType ComputeDType { get; init; } = DType.F32;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
}

/// <summary>What one optimizer step did.</summary>
/// <param name="Step">1-based step number.</param>
/// <param name="Loss">Mean loss over the step's target tokens.</param>
/// <param name="Lr">Learning rate used.</param>
/// <param name="TokensPerSecond">Input tokens processed per second in this step.</param>
/// <param name="GradNorm">Global gradient norm before clipping (NaN when not computed).</param>
/// <param name="Skipped">True when an f16 overflow skipped the update.</param>
public sealed record StepLog(int Step, double Loss, double Lr, double TokensPerSecond, double GradNorm, bool Skipped);

/// <summary>Fine-tunes the parameters of a model that require grad.</summary>
public sealed class SftTrainer
{
    private readonly LlamaForCausalLM model;
    private readonly SftDataLoader train;
    private readonly SftOptions options;
    private readonly ITrainingLoss loss;
    private readonly ICollective collective;
    private readonly Generator? rng;
    private readonly List<(string Name, Tensor Param)> trainable;
    private readonly AdamW optimizer;
    private readonly LrSchedule schedule;
    private readonly DynamicLossScaler? scaler;

    /// <summary>
    /// A trainer for the parameters of <paramref name="model"/> that require grad; <paramref name="rng"/>
    /// is the generator dropout draws from (saved in checkpoints), if any.
    /// </summary>
    public SftTrainer(LlamaForCausalLM model, SftDataLoader train, SftOptions options, ITrainingLoss? loss = null, ICollective? collective = null, Generator? rng = null)
    {
        if (options.Steps < 0) throw new ArgumentException($"steps must be >= 0, got {options.Steps}");
        if (options.GradAccum < 1) throw new ArgumentException($"grad-accum must be >= 1, got {options.GradAccum}");
        if (!(options.Lr >= 0)) throw new ArgumentException($"lr must be >= 0, got {options.Lr}");
        if (options.ComputeDType is not (DType.F32 or DType.BF16 or DType.F16))
            throw new ArgumentException($"compute dtype must be f32, bf16 or f16, not {options.ComputeDType.Name()}");
        this.model = model;
        this.train = train;
        this.options = options;
        this.loss = loss ?? new CrossEntropyLoss();
        this.collective = collective ?? SingleProcess.Instance;
        this.rng = rng;
        trainable = model.NamedParameters().Where(p => p.Value.RequiresGrad).ToList();
        if (trainable.Count == 0) throw new ArgumentException("no parameter requires grad: nothing to train");
        optimizer = new AdamW(trainable.Select(p => p.Param), options.Lr, options.Beta1, options.Beta2, options.Eps, options.WeightDecay);
        schedule = new LrSchedule(options.Schedule, options.Lr, options.Warmup, options.Steps);
        if (options.ComputeDType == DType.F16) scaler = new DynamicLossScaler();
        model.Train();
    }

    /// <summary>Optimizer steps completed.</summary>
    public int Step { get; private set; }

    /// <summary>Every step's log, in order (restored on resume).</summary>
    public List<StepLog> History { get; } = [];

    /// <summary>(step, validation loss) pairs recorded by the caller (restored on resume).</summary>
    public List<(int Step, double Loss)> ValidationHistory { get; } = [];

    /// <summary>The trained parameters with their names.</summary>
    public IReadOnlyList<(string Name, Tensor Param)> Trainable => trainable;

    /// <summary>The current f16 loss scale (1 when not scaling).</summary>
    public double LossScale => scaler?.Scale ?? 1.0;

    /// <summary>Runs one optimizer step.</summary>
    public StepLog TrainStep()
    {
        long t0 = Stopwatch.GetTimestamp();
        double lr = schedule.At(Step);
        optimizer.Lr = lr;
        optimizer.ZeroGrad();
        var batches = new List<SftBatch>(options.GradAccum);
        for (int i = 0; i < options.GradAccum; i++) batches.Add(train.Next());
        Span<double> counts = [batches.Sum(b => (double)b.TargetCount), batches.Sum(b => (double)b.InputIds.Numel)];
        collective.AllReduceSum(counts);
        double targets = counts[0], tokens = counts[1];
        if (targets == 0) throw new InvalidOperationException($"step {Step + 1}: the batch has no target tokens (every label is masked)");
        double scale = scaler?.Scale ?? 1.0;
        // The summed loss stays where it was computed until the end of the step: reading it here would make
        // the host wait for the device between the forward and the backward pass.
        Tensor? lossSum = null;
        foreach (var batch in batches)
        {
            Tensor s;
            using (Autocast.Enable(options.ComputeDType))
                s = loss.SumLoss(model, batch);
            using (GradMode.NoGrad()) lossSum = lossSum is null ? s.Detach() : lossSum + s.Detach();
            (s * (scale / targets)).Backward();
        }
        var parameters = trainable.Select(p => p.Param).ToList();
        collective.AllReduceGradients(parameters.Where(p => p.Grad is not null).Select(p => p.Grad!).ToList());

        bool skipped = false;
        double gradNorm = double.NaN;
        Tensor? clippedNorm = null;
        using (GradMode.NoGrad())
        {
            if (scaler is not null)
            {
                // f16 loss scaling must decide on the host whether to skip the step: the one read inside a step.
                foreach (var p in parameters) p.Grad?.Mul_(1.0 / scale);
                gradNorm = GradClip.GlobalNorm(parameters);
                skipped = !double.IsFinite(gradNorm);
                scaler.Update(skipped);
            }
            if (!skipped)
            {
                if (options.GradClip > 0) clippedNorm = GradClip.ClipGradNormOnDevice(parameters, options.GradClip);
                optimizer.Step();
            }
        }
        // Everything of the step is enqueued; the host now reads what it reports.
        Span<double> lossTotal = [lossSum!.Item()];
        collective.AllReduceSum(lossTotal);
        if (clippedNorm is not null) gradNorm = clippedNorm.Item();
        Step++;
        double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        var log = new StepLog(Step, lossTotal[0] / targets, lr, tokens / Math.Max(seconds, 1e-9), gradNorm, skipped);
        History.Add(log);
        return log;
    }

    /// <summary>Mean loss and perplexity over every example of a dataset (no gradients, batches of batchSize).</summary>
    public (double Loss, double Perplexity) Evaluate(IReadOnlyList<SftExample> examples, int batchSize, int padId, int maxLength)
    {
        if (examples.Count == 0) throw new ArgumentException("evaluation set is empty");
        double sum = 0, count = 0;
        bool wasTraining = model.Training;
        model.Eval();
        using (GradMode.NoGrad())
        {
            for (int start = 0; start < examples.Count; start += batchSize)
            {
                var rows = examples.Skip(start).Take(batchSize).ToList();
                var batch = SftDataLoader.Collate(rows, padId, maxLength);
                if (batch.TargetCount == 0) continue;
                using (Autocast.Enable(options.ComputeDType))
                    sum += new CrossEntropyLoss().SumLoss(model, batch).Item();
                count += batch.TargetCount;
            }
        }
        model.Train(wasTraining);
        double mean = sum / Math.Max(count, 1);
        return (mean, Math.Exp(mean));
    }

    // ---------------- checkpoints ----------------

    private const string ParamsFile = "trainable.safetensors";
    private const string OptimizerFile = "optimizer.safetensors";
    private const string StateFile = "trainer_state.json";

    /// <summary>
    /// Writes everything needed to resume into <paramref name="dir"/>, atomically: the files go to a
    /// temporary sibling directory that then replaces the old checkpoint, so an interrupted save
    /// leaves the previous checkpoint intact.
    /// </summary>
    public void SaveCheckpoint(string dir)
    {
        var full = Path.GetFullPath(dir);
        var parent = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        var tmp = Path.Combine(parent, "." + Path.GetFileName(full) + ".tmp-" + Environment.ProcessId);
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        Safetensors.Save(Path.Combine(tmp, ParamsFile), trainable.ToDictionary(p => p.Name, p => p.Param.Detach()));
        var moments = new Dictionary<string, Tensor>();
        for (int i = 0; i < trainable.Count; i++)
        {
            var (m, v) = optimizer.State(i);
            if (m is not null) moments["m." + trainable[i].Name] = m;
            if (v is not null) moments["v." + trainable[i].Name] = v;
        }
        Safetensors.Save(Path.Combine(tmp, OptimizerFile), moments);
        var state = new JsonObject
        {
            ["step"] = Step,
            ["optimizer_step"] = optimizer.StepCount,
            ["loss_scale"] = scaler?.Scale ?? 1.0,
            ["scaler_good_steps"] = scaler?.GoodSteps ?? 0,
            ["data"] = JsonNode.Parse(train.GetState().ToJson()),
            ["rng"] = rng is null ? null : new JsonArray(rng.GetState().Select(u => (JsonNode)u.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray()),
            ["history"] = new JsonArray(History.Select(h => (JsonNode)new JsonObject
            {
                ["step"] = h.Step, ["loss"] = h.Loss, ["lr"] = h.Lr, ["tokens_per_second"] = h.TokensPerSecond,
                ["grad_norm"] = double.IsFinite(h.GradNorm) ? h.GradNorm : null, ["skipped"] = h.Skipped,
            }).ToArray()),
            ["validation"] = new JsonArray(ValidationHistory.Select(v => (JsonNode)new JsonObject { ["step"] = v.Step, ["loss"] = v.Loss }).ToArray()),
        };
        File.WriteAllText(Path.Combine(tmp, StateFile), state.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        // Swap in: old -> backup, tmp -> dir, drop backup. Each rename is atomic on one file system.
        string? backup = null;
        if (Directory.Exists(full))
        {
            backup = Path.Combine(parent, "." + Path.GetFileName(full) + ".old-" + Environment.ProcessId);
            if (Directory.Exists(backup)) Directory.Delete(backup, true);
            Directory.Move(full, backup);
        }
        Directory.Move(tmp, full);
        if (backup is not null) Directory.Delete(backup, true);
    }

    /// <summary>Restores a checkpoint written by <see cref="SaveCheckpoint"/> (same model setup and data).</summary>
    public void LoadCheckpoint(string dir)
    {
        string Need(string name)
        {
            var path = Path.Combine(dir, name);
            if (!File.Exists(path)) throw new InvalidDataException($"{dir}: not a training checkpoint ({name} is missing)");
            return path;
        }
        var paramsFile = SafetensorsFile.Open(Need(ParamsFile));
        var momentsFile = SafetensorsFile.Open(Need(OptimizerFile));
        JsonNode state;
        try { state = JsonNode.Parse(File.ReadAllText(Need(StateFile))) ?? throw new InvalidDataException("empty"); }
        catch (JsonException e) { throw new InvalidDataException($"{Path.Combine(dir, StateFile)}: malformed JSON ({e.Message})"); }
        using (GradMode.NoGrad())
        {
            foreach (var (name, p) in trainable)
            {
                if (!paramsFile.Contains(name)) throw new InvalidDataException($"{paramsFile.Path}: tensor '{name}' is missing (was the checkpoint made with other LoRA targets?)");
                var src = paramsFile.Get(name);
                if (!src.Shape.SequenceEqual(p.Shape)) throw new InvalidDataException($"{paramsFile.Path}: tensor '{name}' has shape {Shapes.Format(src.Shape)}, expected {Shapes.Format(p.Shape)}");
                p.CopyFrom_(src);
            }
        }
        var m1 = new Tensor?[trainable.Count];
        var m2 = new Tensor?[trainable.Count];
        for (int i = 0; i < trainable.Count; i++)
        {
            string n = trainable[i].Name;
            if (momentsFile.Contains("m." + n)) m1[i] = momentsFile.Get("m." + n).Clone();
            if (momentsFile.Contains("v." + n)) m2[i] = momentsFile.Get("v." + n).Clone();
        }
        try
        {
            optimizer.SetState((int)state["optimizer_step"]!, m1, m2);
            Step = (int)state["step"]!;
            scaler?.Restore((double)state["loss_scale"]!, (int)state["scaler_good_steps"]!);
            train.SetState(DataLoaderState.FromJson(state["data"]!.ToJsonString()));
            if (rng is not null && state["rng"] is JsonArray words)
                rng.SetState(words.Select(w => ulong.Parse((string)w!, System.Globalization.CultureInfo.InvariantCulture)).ToArray());
            History.Clear();
            foreach (var h in state["history"]!.AsArray())
                History.Add(new StepLog((int)h!["step"]!, (double)h["loss"]!, (double)h["lr"]!, (double)h["tokens_per_second"]!,
                    h["grad_norm"] is JsonNode g ? (double)g : double.NaN, (bool)h["skipped"]!));
            ValidationHistory.Clear();
            foreach (var v in state["validation"]!.AsArray()) ValidationHistory.Add(((int)v!["step"]!, (double)v["loss"]!));
        }
        catch (Exception e) when (e is NullReferenceException or InvalidOperationException or FormatException or ArgumentException)
        {
            throw new InvalidDataException($"{Path.Combine(dir, StateFile)}: missing or ill-typed field ({e.Message})");
        }
    }
}
