// The fine-tuning loop, one optimizer step at a time, for any ITrainingObjective (SFT, reward model, DPO):
//   lr <- schedule(step)
//   for each of K micro-batches:  (sum of item losses * scale / N).Backward()   (N = items in the step:
//                                                                              target tokens, or pairs)
//   all-reduce gradients (data-parallel seam) -> unscale (f16) -> skip on overflow -> clip -> AdamW
// With several ranks (ICollective.WorldSize > 1) the last micro-batch's backward reduces the gradients in
// buckets as they become final (Distributed/GradientBuckets.cs), and with ZeroStage 1 each rank keeps AdamW's
// moments for its shard of the parameters only (Distributed/ZeroAdamW.cs); every rank takes the same step.
// A step whose loss or (outside f16 loss scaling) gradient norm is NaN or infinite throws
// TrainingDivergedException: such a step has already poisoned the weights, so the run must stop before
// anything saves them, and the last checkpoint written stays the last good one.
// Everything a resumed run needs (parameters, AdamW moments, step, loss scale, data position, RNG)
// is saved by SaveCheckpoint and restored by LoadCheckpoint (SftTrainer.Checkpoint.cs), so a resumed
// run follows the same trajectory bit for bit on the CPU.
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.NN;
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
    /// <summary>With several ranks: gradient bytes per all-reduce bucket, launched during backward (0 = one all-reduce after backward).</summary>
    public long BucketBytes { get; init; } = 4L << 20;
    /// <summary>With several ranks: 1 shards AdamW's moments across the ranks (ZeRO stage 1); 0 keeps them whole on every rank.</summary>
    public int ZeroStage { get; init; }
    /// <summary>With several ranks: hash the all-reduced gradients every step and stop if any rank's differ.</summary>
    public bool CheckReplicas { get; init; }

    /// <summary>
    /// Throws an <see cref="ArgumentException"/> naming the first setting outside its range: Steps, Warmup &gt;= 0;
    /// GradAccum &gt;= 1; Lr and Eps finite and &gt; 0; WeightDecay and GradClip finite and &gt;= 0; Beta1 and
    /// Beta2 in [0, 1); ComputeDType f32, bf16 or f16.
    /// </summary>
    public void Validate()
    {
        Check(Steps >= 0, "steps", ">= 0", Steps);
        Check(double.IsFinite(Lr) && Lr > 0, "lr", "a finite number > 0", Lr);
        Check(Warmup >= 0, "warmup", ">= 0", Warmup);
        Check(double.IsFinite(WeightDecay) && WeightDecay >= 0, "weight decay", "a finite number >= 0", WeightDecay);
        Check(double.IsFinite(GradClip) && GradClip >= 0, "grad clip", "a finite number >= 0 (0 = off)", GradClip);
        Check(GradAccum >= 1, "grad-accum", ">= 1", GradAccum);
        Check(Beta1 is >= 0 and < 1, "beta1", "in [0, 1)", Beta1);
        Check(Beta2 is >= 0 and < 1, "beta2", "in [0, 1)", Beta2);
        Check(double.IsFinite(Eps) && Eps > 0, "eps", "a finite number > 0", Eps);
        Check(BucketBytes >= 0, "bucket size", ">= 0", BucketBytes);
        Check(ZeroStage is 0 or 1, "zero stage", "0 or 1", ZeroStage);
        if (ComputeDType is not (DType.F32 or DType.BF16 or DType.F16))
            throw new ArgumentException($"compute dtype must be f32, bf16 or f16, not {ComputeDType.Name()}");
    }

    private static void Check(bool ok, string name, string range, double value)
    {
        if (!ok) throw new ArgumentException(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{name} must be {range}, got {value}"));
    }
}

/// <summary>
/// A step's loss or gradient norm was NaN or infinite. The parameters were updated with it and are not
/// usable; the last checkpoint saved before this step is the last good state.
/// </summary>
public sealed class TrainingDivergedException(int step, string quantity, double value)
    : Exception(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"training diverged in step {step}: the {quantity} is {value}"))
{
    /// <summary>The 1-based step that diverged.</summary>
    public int Step { get; } = step;

    /// <summary>What was not finite ("loss", "gradient norm", "validation loss").</summary>
    public string Quantity { get; } = quantity;

    /// <summary>The value (NaN or an infinity).</summary>
    public double Value { get; } = value;
}

/// <summary>Where a data-parallel step's time went.</summary>
/// <param name="BackwardSeconds">Wall time of the step's backward passes (the bucketed all-reduces run during the last).</param>
/// <param name="AllReduceSeconds">Time the communication thread spent inside MPI calls for the step's gradients (NaN when unknown).</param>
/// <param name="ExposedSeconds">Time the step waited for the all-reduce after backward: the part not hidden behind it.</param>
public sealed record CommunicationTimes(double BackwardSeconds, double AllReduceSeconds, double ExposedSeconds);

/// <summary>What one optimizer step did.</summary>
/// <param name="Step">1-based step number.</param>
/// <param name="Loss">Mean loss over the step's target tokens.</param>
/// <param name="Lr">Learning rate used.</param>
/// <param name="TokensPerSecond">Input tokens processed per second in this step.</param>
/// <param name="GradNorm">Global gradient norm before clipping (NaN when not computed).</param>
/// <param name="Skipped">True when an f16 overflow skipped the update.</param>
public sealed record StepLog(int Step, double Loss, double Lr, double TokensPerSecond, double GradNorm, bool Skipped)
{
    /// <summary>The objective's per-step metrics (means over the step's items), by name; empty for SFT.</summary>
    public IReadOnlyDictionary<string, double> Metrics { get; init; } = NoMetrics;

    private static readonly IReadOnlyDictionary<string, double> NoMetrics = new Dictionary<string, double>();
}

/// <summary>
/// Fine-tunes the parameters of a model that require grad, for supervised fine-tuning or any other
/// <see cref="ITrainingObjective"/> (the reward model and DPO use it too).
/// </summary>
public sealed partial class SftTrainer
{
    private readonly Module model;
    private readonly ITrainingObjective objective;
    private readonly SftOptions options;
    private readonly ICollective collective;
    private readonly Generator? rng;
    private readonly List<(string Name, Tensor Param)> trainable;
    private readonly AdamW optimizer;
    private readonly LrSchedule schedule;
    private readonly DynamicLossScaler? scaler;
    private readonly Distributed.GradientBuckets? buckets;
    private readonly Distributed.ZeroAdamW? zero;

    /// <summary>
    /// A trainer for the parameters of <paramref name="model"/> that require grad; <paramref name="rng"/>
    /// is the generator dropout draws from (saved in checkpoints), if any.
    /// </summary>
    public SftTrainer(LlamaForCausalLM model, SftDataLoader train, SftOptions options, ITrainingLoss? loss = null, ICollective? collective = null, Generator? rng = null)
        : this(model, new SftObjective(model, train, loss ?? new CrossEntropyLoss()), options, collective, rng)
    {
    }

    /// <summary>
    /// A trainer of <paramref name="objective"/> for the parameters of <paramref name="model"/> that require
    /// grad; <paramref name="rng"/> is the generator dropout draws from (saved in checkpoints), if any.
    /// </summary>
    public SftTrainer(Module model, ITrainingObjective objective, SftOptions options, ICollective? collective = null, Generator? rng = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(objective);
        options.Validate();
        this.model = model;
        this.objective = objective;
        this.options = options;
        this.collective = collective ?? SingleProcess.Instance;
        this.rng = rng;
        trainable = model.NamedParameters().Where(p => p.Value.RequiresGrad).ToList();
        if (trainable.Count == 0) throw new ArgumentException("no parameter requires grad: nothing to train");
        optimizer = new AdamW(trainable.Select(p => p.Param), options.Lr, options.Beta1, options.Beta2, options.Eps, options.WeightDecay);
        schedule = new LrSchedule(options.Schedule, options.Lr, options.Warmup, options.Steps);
        if (options.ComputeDType == DType.F16) scaler = new DynamicLossScaler();
        if (this.collective.WorldSize > 1)
        {
            var parameters = trainable.Select(p => p.Param).ToList();
            if (options.BucketBytes > 0) buckets = new Distributed.GradientBuckets(this.collective, parameters, options.BucketBytes);
            if (options.ZeroStage == 1) zero = new Distributed.ZeroAdamW(parameters, this.collective, options.Beta1, options.Beta2, options.Eps, options.WeightDecay);
        }
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

    /// <summary>Bytes of AdamW state (first and second moments) this rank holds: its shard under ZeRO stage 1.</summary>
    public long OptimizerStateBytes => zero?.StateBytes ?? 2L * trainable.Sum(p => (long)p.Param.Numel * (p.Param.DType == DType.F64 ? 8 : 4));

    /// <summary>Bytes of gradients all-reduced per step (0 with one rank).</summary>
    public long AllReducedBytesPerStep => collective.WorldSize == 1 ? 0 : buckets?.BytesPerStep ?? trainable.Sum(p => (long)p.Param.Numel * (p.Param.DType == DType.F32 ? 4 : 8));

    /// <summary>Where the last step's time went with several ranks (null with one).</summary>
    public CommunicationTimes? LastCommunication { get; private set; }

    /// <summary>With <see cref="SftOptions.CheckReplicas"/>: the hash of the last step's all-reduced gradients, the same on every rank.</summary>
    public ulong? LastGradientHash { get; private set; }

    /// <summary>The current f16 loss scale (1 when not scaling).</summary>
    public double LossScale => scaler?.Scale ?? 1.0;

    /// <summary>
    /// Runs one optimizer step inside a <see cref="DisposeScope"/>: the step's device memory is released when it
    /// returns, and the trained parameters' gradients are cleared (null). Throws <see cref="TrainingDivergedException"/>
    /// (Step and History unchanged) when the step's loss, or its gradient norm outside f16 loss scaling, is NaN or infinite.
    /// </summary>
    public StepLog TrainStep()
    {
        // Everything the step allocates on a device (activations, gradients, temporaries) goes back to the
        // device's pool when the step ends, not when the finalizer gets to it; what outlives the step
        // (parameters, AdamW moments, RoPE tables) was created outside the scope or untracked.
        using var scope = Tensor.NewDisposeScope();
        long t0 = Stopwatch.GetTimestamp();
        double lr = schedule.At(Step);
        optimizer.Lr = lr;
        optimizer.ZeroGrad();
        var batches = new List<IMicroBatch>(options.GradAccum);
        for (int i = 0; i < options.GradAccum; i++) batches.Add(objective.Next());
        Span<double> counts = [batches.Sum(b => (double)b.Normalizer), batches.Sum(b => (double)b.Tokens)];
        collective.AllReduceSum(counts);
        double targets = counts[0], tokens = counts[1];
        if (targets == 0)
            throw new InvalidOperationException(objective is SftObjective
                ? $"step {Step + 1}: the batch has no target tokens (every label is masked)"
                : $"step {Step + 1}: the {objective.Name} batch has nothing to train on");
        double scale = scaler?.Scale ?? 1.0;
        // The summed loss stays where it was computed until the end of the step: reading it here would make
        // the host wait for the device between the forward and the backward pass.
        Tensor? lossSum = null, metricSums = null;
        double backwardSeconds = 0;
        foreach (var batch in batches)
        {
            ObjectiveOutput output;
            using (Autocast.Enable(options.ComputeDType))
                output = batch.Compute();
            var s = output.SumLoss;
            using (GradMode.NoGrad())
            {
                lossSum = lossSum is null ? s.Detach() : lossSum + s.Detach();
                if (output.MetricSums is Tensor m) metricSums = metricSums is null ? m.Detach() : metricSums + m.Detach();
            }
            // Only the last micro-batch's backward reduces, as its gradients are the step's (DDP's no_sync).
            if (ReferenceEquals(batch, batches[^1])) buckets?.Arm();
            long b0 = Stopwatch.GetTimestamp();
            (s * (scale / targets)).Backward();
            backwardSeconds += Stopwatch.GetElapsedTime(b0).TotalSeconds;
        }
        var parameters = trainable.Select(p => p.Param).ToList();
        if (collective.WorldSize > 1)
        {
            long r0 = Stopwatch.GetTimestamp();
            double waited;
            if (buckets is not null) waited = buckets.Finish();
            else
            {
                collective.AllReduceGradients(parameters.Where(p => p.Grad is not null).Select(p => p.Grad!).ToList());
                waited = Stopwatch.GetElapsedTime(r0).TotalSeconds;
            }
            double busy = collective is Distributed.MpiCollective mpi ? mpi.TakeBusySeconds() : double.NaN;
            LastCommunication = new CommunicationTimes(backwardSeconds, busy, waited);
            if (options.CheckReplicas) LastGradientHash = CheckReplicas(parameters);
        }
        else collective.AllReduceGradients(parameters.Where(p => p.Grad is not null).Select(p => p.Grad!).ToList());

        bool skipped = false;
        double gradNorm = double.NaN;
        Tensor? normOnDevice = null;
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
                if (options.GradClip > 0) normOnDevice = GradClip.ClipGradNormOnDevice(parameters, options.GradClip);
                else if (scaler is null) normOnDevice = GradClip.GlobalNormOnDevice(parameters); // to notice divergence
                if (zero is null) optimizer.Step();
                else
                {
                    zero.Lr = lr;
                    zero.Step();
                }
            }
        }
        // Everything of the step is enqueued; the host now reads what it reports.
        Span<double> lossTotal = [lossSum!.Item()];
        collective.AllReduceSum(lossTotal);
        var metrics = ReadMetrics(metricSums, targets);
        if (normOnDevice is not null) gradNorm = normOnDevice.Item();
        double meanLoss = lossTotal[0] / targets;
        if (!double.IsFinite(meanLoss)) throw new TrainingDivergedException(Step + 1, "loss", meanLoss);
        // With f16 loss scaling a non-finite norm is an overflow the scaler answers by skipping the step.
        if (scaler is null && !double.IsFinite(gradNorm)) throw new TrainingDivergedException(Step + 1, "gradient norm", gradNorm);
        optimizer.ZeroGrad();   // the gradients' device memory is released with the scope (PyTorch's set_to_none)
        Step++;
        double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        var log = new StepLog(Step, meanLoss, lr, tokens / Math.Max(seconds, 1e-9), gradNorm, skipped);
        if (metrics is not null) log = log with { Metrics = metrics };
        History.Add(log);
        FaultInjection.Reach(FaultInjection.StepDone, $"step {Step}");
        return log;
    }

    // FNV-1a over the bytes of every reduced gradient, all-gathered: the ranks must hold the same bits.
    private ulong CheckReplicas(List<Tensor> parameters)
    {
        ulong hash = 14695981039346656037UL;
        foreach (var p in parameters)
        {
            if (p.Grad is null) continue;
            foreach (byte x in System.Runtime.InteropServices.MemoryMarshal.AsBytes(p.Grad.ToArray<float>().AsSpan()))
                hash = (hash ^ x) * 1099511628211UL;
        }
        var all = new byte[8 * collective.WorldSize];
        collective.AllGather(BitConverter.GetBytes(hash), all);
        for (int r = 0; r < collective.WorldSize; r++)
        {
            ulong other = BitConverter.ToUInt64(all, 8 * r);
            if (other != hash)
                throw new InvalidOperationException($"step {Step + 1}: the all-reduced gradients differ across ranks (rank {collective.Rank}: {hash:x16}, rank {r}: {other:x16})");
        }
        return hash;
    }

    // The objective's metric sums, all-reduced and divided by the step's item count (null when it has none).
    private Dictionary<string, double>? ReadMetrics(Tensor? sums, double items)
    {
        var names = objective.MetricNames;
        if (names.Count == 0) return null;
        double[] values = sums is null ? new double[names.Count] : sums.To(DType.F64).ToArray<double>();
        if (values.Length != names.Count)
            throw new InvalidOperationException($"the {objective.Name} objective returned {values.Length} metric sums for {names.Count} metrics");
        collective.AllReduceSum(values);
        var metrics = new Dictionary<string, double>(names.Count, StringComparer.Ordinal);
        for (int i = 0; i < names.Count; i++) metrics[names[i]] = values[i] / items;
        return metrics;
    }

    /// <summary>Mean loss and perplexity over every example of a dataset (no gradients, batches of batchSize).</summary>
    public (double Loss, double Perplexity) Evaluate(IReadOnlyList<SftExample> examples, int batchSize, int padId, int maxLength)
    {
        if (examples.Count == 0) throw new ArgumentException("evaluation set is empty");
        if (model is not LlamaForCausalLM lm) throw new InvalidOperationException("Evaluate computes a language-model loss; this trainer's model is not a LlamaForCausalLM");
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
                using (Tensor.NewDisposeScope())
                using (Autocast.Enable(options.ComputeDType))
                    sum += new CrossEntropyLoss().SumLoss(lm, batch).Item();
                count += batch.TargetCount;
            }
        }
        model.Train(wasTraining);
        double mean = sum / Math.Max(count, 1);
        return (mean, Math.Exp(mean));
    }
}
