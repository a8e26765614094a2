// `tinyllama sft`: supervised fine-tuning (Alpaca or ShareGPT data; full or LoRA; mixed precision;
// distillation; exact resume). The output directory is a Hugging Face model directory, or a PEFT
// adapter directory with LoRA, that every other verb loads. With --json: one line per optimizer step,
// {"step": n, "loss": x, "lr": y, "tokens_per_second": z}. Under `mpirun -n P` every rank trains on its share
// of each global batch (Distributed/DataParallel.cs); rank 0 alone prints, checkpoints and writes the outputs,
// and its JSON lines add the data-parallel figures (bytes all-reduced, optimizer state per rank, timings).
using System.CommandLine;
using System.Globalization;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;
using TinyLlama.Training.Lora;
using TinyLlama.Cli.Distributed;
using TinyLlama.Cli.Reporting;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Cli.Commands;

internal static class SftCommand
{
    public static Command Create()
    {
        var model = ModelCommands.ModelOption();
        var tokenizer = ModelCommands.TokenizerOption();
        var data = new Option<string[]>("--data")
        {
            Description = "Training data: a JSON array or JSONL file; repeat as FILE:WEIGHT to train on a weighted mixture",
            Required = true,
            AllowMultipleArgumentsPerToken = false,
        };
        var format = new Option<string>("--format") { Description = "alpaca or sharegpt", Required = true };
        var outDir = new Option<string>("--out") { Description = "Output directory (model, or adapter with LoRA; checkpoint/ and loss.png inside)", Required = true };
        var steps = new Option<int?>("--steps") { Description = "Optimizer steps" };
        var epochs = new Option<double?>("--epochs") { Description = "Passes over the data (instead of --steps)" };
        var batchSize = new Option<int>("--batch-size") { Description = "Sequences per micro-batch", Required = true };
        var common = new TrainerFlags();
        var parallel = new DataParallelFlags();
        var teacher = new Option<string?>("--teacher") { Description = "A teacher model for knowledge distillation" };
        var distillT = new Option<double>("--distill-temperature") { Description = "Softmax temperature of the distillation term", DefaultValueFactory = _ => 2.0 };
        var distillW = new Option<double>("--distill-weight") { Description = "Weight of the distillation term (the rest is cross-entropy)", DefaultValueFactory = _ => 0.5 };
        var evalEvery = new Option<int>("--eval-every") { Description = "Validation loss every N steps (needs --val-fraction)" };
        var checkpointing = new Option<bool>("--activation-checkpointing") { Description = "Recompute layer activations in the backward pass (less memory)" };
        var json = new Option<bool>("--json") { Description = "One JSON line per step: {\"step\": n, \"loss\": x, \"lr\": y, \"tokens_per_second\": z}" };
        var checkTensors = ModelCommands.CheckTensorsOption();
        var cmd = new Command("sft", "Supervised fine-tuning on instruction or conversation data.")
        {
            model, tokenizer, data, format, outDir, steps, epochs, batchSize, teacher, distillT, distillW, evalEvery, checkpointing, json, checkTensors,
        };
        common.AddTo(cmd);
        parallel.AddTo(cmd);
        cmd.SetAction(parse =>
        {
            // ---- validate flags before touching any file ----
            int? nSteps = parse.GetValue(steps);
            double? nEpochs = parse.GetValue(epochs);
            if (nSteps is null == nEpochs is null) throw new CliException("give exactly one of --steps or --epochs", isUsage: true);
            // Every numeric flag has a range; outside it is a usage error naming the flag.
            if (nSteps is int n) OptionRange.Check("--steps", n, 0);
            if (nEpochs is double ep) OptionRange.Check("--epochs", ep, 0, MaxEpochs, minOpen: true);
            int b = OptionRange.Check("--batch-size", parse.GetValue(batchSize), 1, MaxBatch);
            var settings = common.Parse(parse);
            int k = settings.GradAccum;
            double temperature = OptionRange.Check("--distill-temperature", parse.GetValue(distillT), 0, double.PositiveInfinity, minOpen: true);
            double distillWeight = OptionRange.Check("--distill-weight", parse.GetValue(distillW), 0, 1);
            int evalInterval = OptionRange.Check("--eval-every", parse.GetValue(evalEvery), 0);
            int saveInterval = settings.SaveEvery;
            if (!SftDataset.TryParseFormat(parse.GetValue(format)!, out _)) throw new CliException($"--format: expected alpaca or sharegpt, got '{parse.GetValue(format)}'", isUsage: true);
            double valFrac = settings.ValFraction;
            int rank = settings.LoraRank;
            var parallelSettings = parallel.Parse(parse);

            var output = parse.InvocationConfiguration.Output;
            bool asJson = parse.GetValue(json);
            string modelPath = parse.GetValue(model)!;
            var sources = ParseDataSources(parse.GetValue(data)!);
            var dataPath = sources[0].Path;

            // ---- model, tokenizer, data (every rank loads the model) ----
            var device = DeviceOption.Resolve(parse);
            using var dp = parallelSettings.Start(device, parse.InvocationConfiguration.Error);
            if (!dp.IsRoot) output = TextWriter.Null;
            try
            {
                var files = new ModelFiles { CheckTensors = parse.GetValue(checkTensors) }; // the teacher's weights too
                var lm = ModelCommands.LoadModel(modelPath, files, device);
                var blockTypes = lm.Parameters().Where(p => p.DType.IsQuantized()).Select(p => p.DType.Name()).Distinct().ToList();
                if (rank <= 0 && blockTypes.Count > 0)
                    throw new CliException($"--model: {modelPath} holds {string.Join(" and ", blockTypes)} weights, which full fine-tuning cannot update; train LoRA adapters over them with --lora-rank R, or start from a float model");
                if (rank > 0 && lm.NamedModules().Any(e => e.Value is TinyLlama.NN.LoraLinear))
                    throw new CliException($"--model: {modelPath} is a LoRA adapter, and --lora-rank {rank} would put a second adapter on its layers; train over its base model, or merge it first (tinyllama quantize --model {modelPath} --out merged.gguf --type f32) and train over the merged file", isUsage: true);
                var tok = ModelCommands.LoadTokenizer(modelPath, parse.GetValue(tokenizer), files);
                if (rank > lm.Config.HiddenSize)
                    throw new CliException($"--lora-rank {rank} is larger than the model's hidden size {lm.Config.HiddenSize} (a rank above a layer's width adds no capacity)", isUsage: true);
                int maxLen = settings.MaxLengthFor(lm.Config.MaxPositionEmbeddings);
                ulong s = settings.Seed;
                var datasets = sources.Select(src => SftDataset.Load(src.Path, parse.GetValue(format)!, tok, maxLen)).ToList();
                // Validation is held out from each source before mixing, so no record is in both sets.
                var trainParts = new List<IReadOnlyList<SftExample>>();
                var valParts = new List<SftExample>();
                foreach (var ds in datasets)
                {
                    if (valFrac > 0)
                    {
                        var (tr, va) = SftDataset.SplitValidation(ds.Examples, valFrac, s);
                        trainParts.Add(tr);
                        valParts.AddRange(va);
                    }
                    else trainParts.Add(ds.Examples);
                }
                IReadOnlyList<SftExample> trainSet = trainParts[0], valSet = valParts;
                if (sources.Count > 1)
                {
                    var mixture = new DatasetMixture();
                    for (int i = 0; i < sources.Count; i++) mixture.Add(trainParts[i], sources[i].Weight, Path.GetFileName(sources[i].Path));
                    trainSet = mixture.Build(s);
                }
                var dataset = datasets[0];
                if (trainSet.Count == 0) throw new CliException($"{dataPath}: no training examples");
                double stepCount = nSteps ?? Math.Ceiling(nEpochs!.Value * trainSet.Count / ((double)b * k * dp.WorldSize));
                if (stepCount > int.MaxValue)
                    throw new CliException(string.Create(CultureInfo.InvariantCulture, $"--epochs {nEpochs} over {trainSet.Count} examples makes {stepCount:G4} steps, more than {int.MaxValue}"), isUsage: true);
                int totalSteps = (int)stepCount;
                CheckStepMemory(trainSet, b, k, maxLen, lm.Config.VocabSize);
                int padId = SftDataLoader.InputPadId(tok);
                var loader = new SftDataLoader(trainSet, b, settings.Shuffle, s, padId, maxLen);
                if (dp.WorldSize > 1) loader.Shard(dp.Rank, dp.WorldSize);

                // ---- LoRA, loss, trainer ----
                var rng = new Generator(s ^ 0x10CA);
                var lora = settings.Lora();
                if (lora is not null) TinyLlama.Training.Lora.Lora.Apply(lm, lora, rng);
                lm.GradientCheckpointing = parse.GetValue(checkpointing);
                lm.CheckpointRng = rng;
                ITrainingLoss loss = new CrossEntropyLoss();
                if (parse.GetValue(teacher) is string teacherPath)
                    loss = new DistillationLoss(ModelCommands.LoadModel(teacherPath, files, device, flag: "--teacher"), temperature, distillWeight);
                var trainer = new SftTrainer(lm, loader, parallelSettings.Apply(settings.Options(totalSteps)), loss, dp.Collective, rng);
                var outPath = parse.GetValue(outDir)!;
                if (dp.IsRoot) Directory.CreateDirectory(outPath);
                var checkpoints = new RunCheckpoints(trainer, outPath);
                var checkpointDir = checkpoints.Dir;
                void Save() => checkpoints.Save();
                if (settings.Resume is string resumeDir) checkpoints.Resume(resumeDir);
                if (!asJson)
                    output.WriteLine($"{string.Join("; ", datasets.Select(d => d.Summary()))}; {trainSet.Count} train / {valSet.Count} validation examples; {trainer.Trainable.Sum(p => (long)p.Param.Numel):N0} trainable parameters; {totalSteps} steps");
                if (!asJson && dp.WorldSize > 1)
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"data parallel: {dp.WorldSize} ranks x batch {b} x {k} accumulation = {dp.WorldSize * b * k} sequences per step; {trainer.AllReducedBytesPerStep / 1e6:F2} MB all-reduced per step; AdamW state {trainer.OptimizerStateBytes / 1e6:F2} MB per rank{(parallelSettings.ZeroStage == 1 ? " (ZeRO stage 1)" : "")}"));

                // ---- the loop ----
                var progress = asJson ? null : new ProgressLine(output, totalSteps);
                while (trainer.Step < totalSteps)
                {
                    StepLog log;
                    try { log = trainer.TrainStep(); }
                    catch (TrainingDivergedException diverged) { throw Diverged(diverged.Message, checkpoints.Last); }
                    if (asJson && dp.WorldSize > 1)
                        output.WriteLine(ParallelJsonLine(log, trainer));
                    else if (asJson)
                        output.WriteLine(JsonLine.Format(("step", log.Step), ("loss", log.Loss), ("lr", log.Lr), ("tokens_per_second", Math.Round(log.TokensPerSecond, 2))));
                    else progress!.Report(log);
                    if (valSet.Count > 0 && evalInterval > 0 && log.Step % evalInterval == 0)
                    {
                        var (vl, ppl) = trainer.Evaluate(valSet, b, padId, maxLen);
                        if (!double.IsFinite(vl)) throw Diverged(new TrainingDivergedException(log.Step, "validation loss", vl).Message, checkpoints.Last);
                        trainer.ValidationHistory.Add((log.Step, vl));
                        if (!asJson) output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"step {log.Step}: validation loss {vl:F4}, perplexity {ppl:F2}"));
                    }
                    if (saveInterval > 0 && log.Step % saveInterval == 0 && log.Step < totalSteps)
                        Save();
                }
                progress?.Done();
                if (valSet.Count > 0 && (evalInterval <= 0 || trainer.Step % evalInterval != 0))
                {
                    var (vl, ppl) = trainer.Evaluate(valSet, b, padId, maxLen);
                    if (!double.IsFinite(vl)) throw Diverged(new TrainingDivergedException(trainer.Step, "validation loss", vl).Message, checkpoints.Last);
                    trainer.ValidationHistory.Add((trainer.Step, vl));
                    if (!asJson) output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"final validation loss {vl:F4}, perplexity {ppl:F2}"));
                }

                // ---- outputs ----
                Save();
                if (!dp.IsRoot) return ExitCodes.Success;
                SaveResult(outPath, modelPath, lm, lora, parse.GetValue(tokenizer));
                LossCurve.Save(Path.Combine(outPath, "loss.png"), trainer.History.Select(h => (h.Step, h.Loss)).ToList(), trainer.ValidationHistory, $"sft {Path.GetFileName(Path.GetFullPath(dataPath))}");
                if (!asJson) output.WriteLine($"wrote {(lora is null ? "model" : "LoRA adapter")} to {outPath} (resumable checkpoint in {checkpointDir}, loss curve in loss.png)");
                return ExitCodes.Success;
            }
            catch (Exception e)
            {
                dp.Fail(e); // under MPI: one line naming the rank, and the job ends
                throw;
            }
        });
        return cmd;
    }

    private const int MaxBatch = TrainerFlags.MaxBatch;

    // A step's JSON line on rank 0 of several: the usual fields, then bytes all-reduced, AdamW state bytes on
    // this rank, the backward / all-reduce / exposed (not hidden by backward) seconds, and the gradient hash.
    private static string ParallelJsonLine(StepLog log, SftTrainer trainer)
    {
        var c = trainer.LastCommunication;
        var fields = new List<(string, object)>
        {
            ("step", log.Step), ("loss", log.Loss), ("lr", log.Lr), ("tokens_per_second", Math.Round(log.TokensPerSecond, 2)),
            ("allreduce_bytes", trainer.AllReducedBytesPerStep), ("optimizer_state_bytes", trainer.OptimizerStateBytes),
        };
        if (c is not null)
        {
            fields.Add(("backward_s", Math.Round(c.BackwardSeconds, 6)));
            if (double.IsFinite(c.AllReduceSeconds)) fields.Add(("allreduce_s", Math.Round(c.AllReduceSeconds, 6)));
            fields.Add(("exposed_allreduce_s", Math.Round(c.ExposedSeconds, 6)));
        }
        if (trainer.LastGradientHash is ulong hash) fields.Add(("grad_hash", hash.ToString("x16", CultureInfo.InvariantCulture)));
        return JsonLine.Format([.. fields]);
    }
    private const double MaxEpochs = 1e6;

    /// <summary>
    /// Refuses a step whose smallest possible footprint exceeds the memory this process can have: the
    /// logits of one micro-batch (B x T x V f32, T the longest example after truncation) plus the token ids
    /// of the K micro-batches a step holds, a lower bound on what the step needs.
    /// </summary>
    internal static void CheckStepMemory(IReadOnlyList<SftExample> examples, int b, int k, int maxLen, int vocab)
    {
        long longest = Math.Min(maxLen, examples.Max(e => e.InputIds.Length));
        double bytes = (double)b * longest * vocab * sizeof(float) + (double)k * b * longest * 2 * sizeof(int);
        OptionRange.CheckMemory($"--batch-size {b} x --grad-accum {k} with sequences of up to {longest} tokens (its logits alone)", bytes, "lower --batch-size or --max-length");
    }

    /// <summary>The one-line failure for a run that diverged, naming the last good checkpoint.</summary>
    internal static CliException Diverged(string what, string? lastCheckpoint) =>
        new(lastCheckpoint is null
            ? $"{what}; no checkpoint was written before it (--save-every N keeps one); try a smaller --lr or --grad-clip"
            : $"{what}; the last good checkpoint is {lastCheckpoint} (continue with --resume {lastCheckpoint} and a smaller --lr)");

    /// <summary>Parses repeated --data values FILE or FILE:WEIGHT (weight > 0, default 1).</summary>
    internal static List<(string Path, double Weight)> ParseDataSources(string[] values)
    {
        var result = new List<(string, double)>();
        foreach (var value in values)
        {
            string path = value;
            double weight = 1;
            int colon = value.LastIndexOf(':');
            if (colon > 0 && double.TryParse(value[(colon + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out var w))
            {
                path = value[..colon];
                weight = w;
            }
            if (!(weight > 0) || double.IsInfinity(weight)) throw new CliException($"--data: weight of {path} must be > 0, got {weight}", isUsage: true);
            TextFileOption.RequireFile(path, "--data");
            result.Add((path, weight));
        }
        if (result.Count == 0) throw new CliException("--data: no file given", isUsage: true);
        return result;
    }

    /// <summary>Writes the trained model (HF layout) or adapter (PEFT layout), with the tokenizer beside it.</summary>
    internal static void SaveResult(string outPath, string baseModelPath, LlamaForCausalLM lm, LoraConfig? lora, string? tokenizerPath)
    {
        if (lora is not null)
        {
            PeftAdapter.Save(outPath, lm, lora, Path.GetFullPath(baseModelPath));
        }
        else
        {
            Safetensors.Save(Path.Combine(outPath, Checkpoint.SafetensorsName), lm.StateDict().ToDictionary(p => p.Key, p => p.Value.Detach()), new Dictionary<string, string> { ["format"] = "pt" });
            AtomicFile.WriteAllText(Path.Combine(outPath, Checkpoint.ConfigName), lm.Config.ToJson());
        }
        CopyTokenizer(outPath, baseModelPath, tokenizerPath);
    }

    /// <summary>Copies tokenizer.model / tokenizer.json from --tokenizer, or from the base model's directory, into <paramref name="outPath"/>.</summary>
    internal static void CopyTokenizer(string outPath, string baseModelPath, string? tokenizerPath)
    {
        var tokSource = tokenizerPath ?? (Directory.Exists(baseModelPath) ? baseModelPath : null);
        if (tokSource is not null)
        {
            foreach (var name in new[] { "tokenizer.model", "tokenizer.json" })
            {
                var src = Directory.Exists(tokSource) ? Path.Combine(tokSource, name) : (Path.GetFileName(tokSource) == name ? tokSource : null);
                if (src is not null && File.Exists(src)) AtomicFile.Copy(src, Path.Combine(outPath, name));
            }
        }
    }
}

/// <summary>
/// The checkpoints of a training run in OUT/checkpoint: saving (a failed save, e.g. a full disk, leaves the
/// previous one in place: CheckpointDirectory.Commit) and resuming, and the newest good one, which the
/// message of a diverged run names.
/// </summary>
internal sealed class RunCheckpoints(SftTrainer trainer, string outPath)
{
    /// <summary>OUT/checkpoint.</summary>
    public string Dir { get; } = Path.Combine(outPath, "checkpoint");

    /// <summary>The newest good checkpoint of this run (saved or resumed from), or null.</summary>
    public string? Last { get; private set; }

    public void Save()
    {
        try { trainer.SaveCheckpoint(Dir); }
        catch (IOException e)
        {
            throw new CliException($"{Dir}: the checkpoint of step {trainer.Step} could not be written ({e.Message}); "
                + (Last is null ? "no earlier checkpoint was written" : $"the previous checkpoint is intact (continue with --resume {Last})"));
        }
        Last = Dir;
    }

    /// <summary>Loads the checkpoint of --resume DIR (DIR/checkpoint, or DIR itself).</summary>
    public void Resume(string resumeDir)
    {
        // An interrupted save may have left the checkpoint between its two renames: recover it first.
        var nested = Path.Combine(resumeDir, "checkpoint");
        var dir = CheckpointDirectory.Recover(nested, SftTrainer.CheckpointFiles) ? nested : resumeDir;
        if (!Directory.Exists(dir)) throw new CliException($"--resume: {resumeDir} does not exist");
        trainer.LoadCheckpoint(dir);
        Last = dir;
    }
}

/// <summary>A one-line progress display: step, loss, tokens/s and ETA, rewritten in place on a terminal.</summary>
internal sealed class ProgressLine(TextWriter output, int total)
{
    private readonly System.Diagnostics.Stopwatch clock = System.Diagnostics.Stopwatch.StartNew();
    private readonly bool interactive = ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected;
    private int first = -1;

    public void Report(StepLog log)
    {
        if (first < 0) first = log.Step - 1;
        double perStep = clock.Elapsed.TotalSeconds / Math.Max(1, log.Step - first);
        var eta = TimeSpan.FromSeconds(perStep * (total - log.Step));
        int width = 24, filled = total == 0 ? width : (int)(width * (double)log.Step / total);
        string line = string.Create(CultureInfo.InvariantCulture,
            $"[{new string('#', filled)}{new string('.', width - filled)}] step {log.Step}/{total}  loss {log.Loss:F4}  lr {log.Lr:G3}  {log.TokensPerSecond:F0} tok/s  ETA {eta:hh\\:mm\\:ss}{(log.Skipped ? "  (skipped: overflow)" : "")}");
        if (interactive) output.Write("\r" + line);
        else if (log.Step == total || log.Step % Math.Max(1, total / 20) == 0) output.WriteLine(line);
    }

    public void Done()
    {
        if (interactive) output.WriteLine();
    }
}
