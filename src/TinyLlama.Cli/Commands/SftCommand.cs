// `tinyllama sft`: supervised fine-tuning (Alpaca or ShareGPT data; full or LoRA; mixed precision;
// distillation; exact resume). The output directory is a Hugging Face model directory, or a PEFT
// adapter directory with LoRA, that every other verb loads. With --json: one line per optimizer step,
// {"step": n, "loss": x, "lr": y, "tokens_per_second": z}.
using System.CommandLine;
using System.Globalization;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;
using TinyLlama.Training.Lora;
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
        var lr = new Option<double>("--lr") { Description = "Peak learning rate", Required = true };
        var warmup = new Option<int>("--warmup") { Description = "Linear warmup steps" };
        var schedule = new Option<string>("--schedule") { Description = "constant or cosine", DefaultValueFactory = _ => "constant" };
        var weightDecay = new Option<double>("--weight-decay") { Description = "AdamW decoupled weight decay (default 0)" };
        var gradClip = new Option<double>("--grad-clip") { Description = "Clip the global gradient norm (0 or absent = off)" };
        var gradAccum = new Option<int>("--grad-accum") { Description = "Micro-batches per optimizer step", DefaultValueFactory = _ => 1 };
        var noShuffle = new Option<bool>("--no-shuffle") { Description = "Consecutive records in file order" };
        var seed = new Option<ulong>("--seed") { Description = "Seed for shuffling, LoRA init and dropout" };
        var dtype = new Option<string>("--dtype") { Description = "f32, or bf16/f16 mixed precision (f32 master weights)", DefaultValueFactory = _ => "f32" };
        var maxLength = new Option<int?>("--max-length") { Description = "Truncate sequences to this many tokens (default: the model's context)" };
        var loraRank = new Option<int>("--lora-rank") { Description = "Train LoRA adapters of this rank instead of all weights" };
        var loraAlpha = new Option<double?>("--lora-alpha") { Description = "LoRA alpha (default 2 x rank)" };
        var loraDropout = new Option<double>("--lora-dropout") { Description = "Dropout on the LoRA input" };
        var loraTargets = new Option<string>("--lora-targets") { Description = "Comma-separated: q,k,v,o,gate,up,down", DefaultValueFactory = _ => "q,v" };
        var teacher = new Option<string?>("--teacher") { Description = "A teacher model for knowledge distillation" };
        var distillT = new Option<double>("--distill-temperature") { Description = "Softmax temperature of the distillation term", DefaultValueFactory = _ => 2.0 };
        var distillW = new Option<double>("--distill-weight") { Description = "Weight of the distillation term (the rest is cross-entropy)", DefaultValueFactory = _ => 0.5 };
        var resume = new Option<string?>("--resume") { Description = "Continue a run from its output directory (or its checkpoint/)" };
        var valFraction = new Option<double>("--val-fraction") { Description = "Hold out this fraction of the data for validation" };
        var evalEvery = new Option<int>("--eval-every") { Description = "Validation loss every N steps (needs --val-fraction)" };
        var saveEvery = new Option<int>("--save-every") { Description = "Write a resumable checkpoint every N steps (always at the end)" };
        var checkpointing = new Option<bool>("--activation-checkpointing") { Description = "Recompute layer activations in the backward pass (less memory)" };
        var json = new Option<bool>("--json") { Description = "One JSON line per step: {\"step\": n, \"loss\": x, \"lr\": y, \"tokens_per_second\": z}" };
        var checkTensors = ModelCommands.CheckTensorsOption();
        var cmd = new Command("sft", "Supervised fine-tuning on instruction or conversation data.")
        {
            model, tokenizer, data, format, outDir, steps, epochs, batchSize, lr, warmup, schedule, weightDecay, gradClip, gradAccum,
            noShuffle, seed, dtype, maxLength, loraRank, loraAlpha, loraDropout, loraTargets, teacher, distillT, distillW, resume,
            valFraction, evalEvery, saveEvery, checkpointing, json, checkTensors,
        };
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
            int k = OptionRange.Check("--grad-accum", parse.GetValue(gradAccum), 1, MaxBatch);
            double peakLr = OptionRange.Check("--lr", parse.GetValue(lr), 0, double.PositiveInfinity, minOpen: true);
            int warmupSteps = OptionRange.Check("--warmup", parse.GetValue(warmup), 0);
            double decay = OptionRange.Check("--weight-decay", parse.GetValue(weightDecay), 0, double.PositiveInfinity);
            double clip = OptionRange.Check("--grad-clip", parse.GetValue(gradClip), 0, double.PositiveInfinity);
            if (parse.GetValue(maxLength) is int ml) OptionRange.Check("--max-length", ml, 2);
            if (parse.GetValue(loraAlpha) is double alpha) OptionRange.Check("--lora-alpha", alpha, 0, double.PositiveInfinity, minOpen: true);
            double dropout = OptionRange.Check("--lora-dropout", parse.GetValue(loraDropout), 0, 1, maxOpen: true);
            double temperature = OptionRange.Check("--distill-temperature", parse.GetValue(distillT), 0, double.PositiveInfinity, minOpen: true);
            double distillWeight = OptionRange.Check("--distill-weight", parse.GetValue(distillW), 0, 1);
            int evalInterval = OptionRange.Check("--eval-every", parse.GetValue(evalEvery), 0);
            int saveInterval = OptionRange.Check("--save-every", parse.GetValue(saveEvery), 0);
            if (!SftDataset.TryParseFormat(parse.GetValue(format)!, out _)) throw new CliException($"--format: expected alpaca or sharegpt, got '{parse.GetValue(format)}'", isUsage: true);
            LrScheduleKind scheduleKind;
            try { scheduleKind = LrSchedule.ParseKind(parse.GetValue(schedule)!); }
            catch (ArgumentException e) { throw new CliException("--schedule: " + e.Message, isUsage: true); }
            DType computeType;
            try { computeType = DTypes.Parse(parse.GetValue(dtype)!); }
            catch (ArgumentException e) { throw new CliException("--dtype: " + e.Message, isUsage: true); }
            if (computeType is not (DType.F32 or DType.BF16 or DType.F16)) throw new CliException("--dtype must be f32, bf16 or f16", isUsage: true);
            double valFrac = OptionRange.Check("--val-fraction", parse.GetValue(valFraction), 0, 1, maxOpen: true);
            int rank = OptionRange.Check("--lora-rank", parse.GetValue(loraRank), 0, MaxLoraRank);
            var loraTargetList = parse.GetValue(loraTargets)!.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);

            var output = parse.InvocationConfiguration.Output;
            bool asJson = parse.GetValue(json);
            string modelPath = parse.GetValue(model)!;
            var sources = ParseDataSources(parse.GetValue(data)!);
            var dataPath = sources[0].Path;

            // ---- model, tokenizer, data ----
            var device = DeviceOption.Resolve(parse);
            var files = new ModelFiles { CheckTensors = parse.GetValue(checkTensors) }; // the teacher's weights too
            var lm = ModelCommands.LoadModel(modelPath, files, device);
            var blockTypes = lm.Parameters().Where(p => p.DType.IsQuantized()).Select(p => p.DType.Name()).Distinct().ToList();
            if (parse.GetValue(loraRank) <= 0 && blockTypes.Count > 0)
                throw new CliException($"--model: {modelPath} holds {string.Join(" and ", blockTypes)} weights, which full fine-tuning cannot update; train LoRA adapters over them with --lora-rank R, or start from a float model");
            if (rank > 0 && lm.NamedModules().Any(e => e.Value is TinyLlama.NN.LoraLinear))
                throw new CliException($"--model: {modelPath} is a LoRA adapter, and --lora-rank {rank} would put a second adapter on its layers; train over its base model, or merge it first (tinyllama quantize --model {modelPath} --out merged.gguf --type f32) and train over the merged file", isUsage: true);
            var tok = ModelCommands.LoadTokenizer(modelPath, parse.GetValue(tokenizer), files);
            if (rank > lm.Config.HiddenSize)
                throw new CliException($"--lora-rank {rank} is larger than the model's hidden size {lm.Config.HiddenSize} (a rank above a layer's width adds no capacity)", isUsage: true);
            int maxLen = parse.GetValue(maxLength) is int m ? Math.Min(m, lm.Config.MaxPositionEmbeddings) : lm.Config.MaxPositionEmbeddings;
            ulong s = parse.GetValue(seed);
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
            double stepCount = nSteps ?? Math.Ceiling(nEpochs!.Value * trainSet.Count / ((double)b * k));
            if (stepCount > int.MaxValue)
                throw new CliException(string.Create(CultureInfo.InvariantCulture, $"--epochs {nEpochs} over {trainSet.Count} examples makes {stepCount:G4} steps, more than {int.MaxValue}"), isUsage: true);
            int totalSteps = (int)stepCount;
            CheckStepMemory(trainSet, b, k, maxLen, lm.Config.VocabSize);
            int padId = SftDataLoader.InputPadId(tok);
            var loader = new SftDataLoader(trainSet, b, !parse.GetValue(noShuffle), s, padId, maxLen);

            // ---- LoRA, loss, trainer ----
            var rng = new Generator(s ^ 0x10CA);
            LoraConfig? lora = null;
            if (rank > 0)
            {
                lora = new LoraConfig(rank, parse.GetValue(loraAlpha) ?? 2.0 * rank, dropout, loraTargetList);
                TinyLlama.Training.Lora.Lora.Apply(lm, lora, rng);
            }
            lm.GradientCheckpointing = parse.GetValue(checkpointing);
            lm.CheckpointRng = rng;
            ITrainingLoss loss = new CrossEntropyLoss();
            if (parse.GetValue(teacher) is string teacherPath)
                loss = new DistillationLoss(ModelCommands.LoadModel(teacherPath, files, device, flag: "--teacher"), temperature, distillWeight);
            var options = new SftOptions
            {
                Steps = totalSteps, Lr = peakLr, Warmup = warmupSteps, Schedule = scheduleKind,
                WeightDecay = decay, GradClip = clip, GradAccum = k, ComputeDType = computeType,
            };
            var trainer = new SftTrainer(lm, loader, options, loss, rng: rng);
            var outPath = parse.GetValue(outDir)!;
            Directory.CreateDirectory(outPath);
            var checkpointDir = Path.Combine(outPath, "checkpoint");
            string? lastCheckpoint = null; // the newest good checkpoint of this run, named when it diverges
            // A failed save (a full disk) leaves the previous checkpoint in place (CheckpointDirectory.Commit).
            void Save()
            {
                try { trainer.SaveCheckpoint(checkpointDir); }
                catch (IOException e)
                {
                    throw new CliException($"{checkpointDir}: the checkpoint of step {trainer.Step} could not be written ({e.Message}); "
                        + (lastCheckpoint is null ? "no earlier checkpoint was written" : $"the previous checkpoint is intact (continue with --resume {lastCheckpoint})"));
                }
                lastCheckpoint = checkpointDir;
            }
            if (parse.GetValue(resume) is string resumeDir)
            {
                // An interrupted save may have left the checkpoint between its two renames: recover it first.
                var nested = Path.Combine(resumeDir, "checkpoint");
                var dir = CheckpointDirectory.Recover(nested, SftTrainer.CheckpointFiles) ? nested : resumeDir;
                if (!Directory.Exists(dir)) throw new CliException($"--resume: {resumeDir} does not exist");
                trainer.LoadCheckpoint(dir);
                lastCheckpoint = dir;
            }
            if (!asJson)
                output.WriteLine($"{string.Join("; ", datasets.Select(d => d.Summary()))}; {trainSet.Count} train / {valSet.Count} validation examples; {trainer.Trainable.Sum(p => (long)p.Param.Numel):N0} trainable parameters; {totalSteps} steps");

            // ---- the loop ----
            var progress = asJson ? null : new ProgressLine(output, totalSteps);
            while (trainer.Step < totalSteps)
            {
                StepLog log;
                try { log = trainer.TrainStep(); }
                catch (TrainingDivergedException diverged) { throw Diverged(diverged.Message, lastCheckpoint); }
                if (asJson)
                    output.WriteLine(JsonLine.Format(("step", log.Step), ("loss", log.Loss), ("lr", log.Lr), ("tokens_per_second", Math.Round(log.TokensPerSecond, 2))));
                else progress!.Report(log);
                if (valSet.Count > 0 && evalInterval > 0 && log.Step % evalInterval == 0)
                {
                    var (vl, ppl) = trainer.Evaluate(valSet, b, padId, maxLen);
                    if (!double.IsFinite(vl)) throw Diverged(new TrainingDivergedException(log.Step, "validation loss", vl).Message, lastCheckpoint);
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
                if (!double.IsFinite(vl)) throw Diverged(new TrainingDivergedException(trainer.Step, "validation loss", vl).Message, lastCheckpoint);
                trainer.ValidationHistory.Add((trainer.Step, vl));
                if (!asJson) output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"final validation loss {vl:F4}, perplexity {ppl:F2}"));
            }

            // ---- outputs ----
            Save();
            SaveResult(outPath, modelPath, lm, lora, parse.GetValue(tokenizer));
            LossCurve.Save(Path.Combine(outPath, "loss.png"), trainer.History.Select(h => (h.Step, h.Loss)).ToList(), trainer.ValidationHistory, $"sft {Path.GetFileName(Path.GetFullPath(dataPath))}");
            if (!asJson) output.WriteLine($"wrote {(lora is null ? "model" : "LoRA adapter")} to {outPath} (resumable checkpoint in {checkpointDir}, loss curve in loss.png)");
            return ExitCodes.Success;
        });
        return cmd;
    }

    // Upper ends of the flags' ranges: far beyond any run that fits in memory, small enough to multiply safely.
    private const int MaxBatch = 1 << 20;
    private const int MaxLoraRank = 1 << 16;
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
    private static CliException Diverged(string what, string? lastCheckpoint) =>
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
