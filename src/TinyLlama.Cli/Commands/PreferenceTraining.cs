// What `reward train` and `dpo` share: the training flags (named and ranged as sft's), loading the model,
// tokenizer and preference pairs, LoRA, the trainer, --resume and periodic checkpoints, and the step loop
// with its divergence message. Each verb adds its objective and what it writes at the end.
using System.CommandLine;
using System.Globalization;
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Lora;
using TinyLlama.Training.Preferences;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Cli.Commands;

/// <summary>The flags of a preference-training verb and the run they describe.</summary>
internal sealed class PreferenceTraining
{
    private const int MaxBatch = 1 << 20;
    private const int MaxLoraRank = 1 << 16;

    public readonly Option<string> Model = ModelCommands.ModelOption();
    public readonly Option<string?> Tokenizer = ModelCommands.TokenizerOption();
    public readonly Option<string> Data = new("--data") { Description = "Preference pairs: JSON Lines or a JSON array of {\"prompt\", \"chosen\", \"rejected\"}", Required = true };
    public readonly Option<string> Out;
    public readonly Option<int> Steps = new("--steps") { Description = "Optimizer steps", Required = true };
    public readonly Option<int> BatchSize = new("--batch-size") { Description = "Pairs per micro-batch", DefaultValueFactory = _ => 2 };
    public readonly Option<double> Lr;
    public readonly Option<int> Warmup = new("--warmup") { Description = "Linear warmup steps" };
    public readonly Option<string> Schedule = new("--schedule") { Description = "constant or cosine", DefaultValueFactory = _ => "constant" };
    public readonly Option<double> WeightDecay = new("--weight-decay") { Description = "AdamW decoupled weight decay (default 0)" };
    public readonly Option<double> GradClip = new("--grad-clip") { Description = "Clip the global gradient norm (0 or absent = off)" };
    public readonly Option<int> GradAccum = new("--grad-accum") { Description = "Micro-batches per optimizer step", DefaultValueFactory = _ => 1 };
    public readonly Option<bool> NoShuffle = new("--no-shuffle") { Description = "Pairs in file order" };
    public readonly Option<ulong> Seed = new("--seed") { Description = "Seed for shuffling, the held-out split, LoRA and head init, dropout" };
    public readonly Option<string> ComputeType = new("--dtype") { Description = "f32, or bf16/f16 mixed precision (f32 master weights)", DefaultValueFactory = _ => "f32" };
    public readonly Option<int?> MaxLength = new("--max-length") { Description = "Truncate each sequence to this many tokens (default: the model's context)" };
    public readonly Option<int> LoraRank = new("--lora-rank") { Description = "Train LoRA adapters of this rank instead of all weights" };
    public readonly Option<double?> LoraAlpha = new("--lora-alpha") { Description = "LoRA alpha (default 2 x rank)" };
    public readonly Option<double> LoraDropout = new("--lora-dropout") { Description = "Dropout on the LoRA input" };
    public readonly Option<string> LoraTargets = new("--lora-targets") { Description = "Comma-separated: q,k,v,o,gate,up,down", DefaultValueFactory = _ => "q,v" };
    public readonly Option<string?> Resume = new("--resume") { Description = "Continue a run from its output directory (or its checkpoint/)" };
    public readonly Option<double> ValFraction = new("--val-fraction") { Description = "Hold out this fraction of the pairs for evaluation" };
    public readonly Option<int> SaveEvery = new("--save-every") { Description = "Write a resumable checkpoint every N steps (always at the end)" };
    public readonly Option<bool> Json;
    public readonly Option<bool> CheckTensors = ModelCommands.CheckTensorsOption();

    public PreferenceTraining(string outDescription, double defaultLr, string jsonDescription)
    {
        Out = new Option<string>("--out") { Description = outDescription, Required = true };
        Lr = new Option<double>("--lr") { Description = "Peak learning rate", DefaultValueFactory = _ => defaultLr };
        Json = new Option<bool>("--json") { Description = jsonDescription };
    }

    /// <summary>Adds every flag to <paramref name="cmd"/>.</summary>
    public void AddTo(Command cmd)
    {
        foreach (var option in new Option[]
        {
            Model, Tokenizer, Data, Out, Steps, BatchSize, Lr, Warmup, Schedule, WeightDecay, GradClip, GradAccum, NoShuffle, Seed, ComputeType,
            MaxLength, LoraRank, LoraAlpha, LoraDropout, LoraTargets, Resume, ValFraction, SaveEvery, Json, CheckTensors,
        })
            cmd.Options.Add(option);
    }

    /// <summary>A run's model, data and settings, after every flag was checked.</summary>
    public sealed class Run
    {
        public required LlamaForCausalLM Model { get; init; }
        public required LlamaTokenizer Tokenizer { get; init; }
        public required TokenizedPreferences Data { get; init; }
        public required IReadOnlyList<TokenizedPair> Train { get; init; }
        public required IReadOnlyList<TokenizedPair> HeldOut { get; init; }
        public required SftOptions Options { get; init; }
        public required LoraConfig? Lora { get; init; }
        public required int BatchSize { get; init; }
        public required int MaxLength { get; init; }
        public required int PadId { get; init; }
        public required ulong Seed { get; init; }
        public required bool Shuffle { get; init; }
        public required Generator Rng { get; init; }
        public required string OutPath { get; init; }
        public required bool AsJson { get; init; }
    }

    /// <summary>Checks the flags (usage errors name the flag), then loads the model, tokenizer and pairs and applies LoRA.</summary>
    public Run Load(ParseResult parse)
    {
        int steps = OptionRange.Check("--steps", parse.GetValue(Steps), 0);
        int b = OptionRange.Check("--batch-size", parse.GetValue(BatchSize), 1, MaxBatch);
        int k = OptionRange.Check("--grad-accum", parse.GetValue(GradAccum), 1, MaxBatch);
        double lr = OptionRange.Check("--lr", parse.GetValue(Lr), 0, double.PositiveInfinity, minOpen: true);
        int warmup = OptionRange.Check("--warmup", parse.GetValue(Warmup), 0);
        double decay = OptionRange.Check("--weight-decay", parse.GetValue(WeightDecay), 0, double.PositiveInfinity);
        double clip = OptionRange.Check("--grad-clip", parse.GetValue(GradClip), 0, double.PositiveInfinity);
        if (parse.GetValue(MaxLength) is int ml) OptionRange.Check("--max-length", ml, 2);
        if (parse.GetValue(LoraAlpha) is double alpha) OptionRange.Check("--lora-alpha", alpha, 0, double.PositiveInfinity, minOpen: true);
        double dropout = OptionRange.Check("--lora-dropout", parse.GetValue(LoraDropout), 0, 1, maxOpen: true);
        int rank = OptionRange.Check("--lora-rank", parse.GetValue(LoraRank), 0, MaxLoraRank);
        double valFrac = OptionRange.Check("--val-fraction", parse.GetValue(ValFraction), 0, 1, maxOpen: true);
        OptionRange.Check("--save-every", parse.GetValue(SaveEvery), 0);
        LrScheduleKind schedule;
        try { schedule = LrSchedule.ParseKind(parse.GetValue(Schedule)!); }
        catch (ArgumentException e) { throw new CliException("--schedule: " + e.Message, isUsage: true); }
        DType computeType;
        try { computeType = DTypes.Parse(parse.GetValue(ComputeType)!); }
        catch (ArgumentException e) { throw new CliException("--dtype: " + e.Message, isUsage: true); }
        if (computeType is not (DType.F32 or DType.BF16 or DType.F16)) throw new CliException("--dtype must be f32, bf16 or f16", isUsage: true);
        string dataPath = parse.GetValue(Data)!;
        TextFileOption.RequireFile(dataPath, "--data");

        string modelPath = parse.GetValue(Model)!;
        var files = new ModelFiles { CheckTensors = parse.GetValue(CheckTensors) };
        var lm = ModelCommands.LoadModel(modelPath, files, DeviceOption.Resolve(parse));
        if (rank <= 0 && lm.Parameters().Any(p => p.DType.IsQuantized()))
            throw new CliException($"--model: {modelPath} holds block-quantized weights, which full fine-tuning cannot update; train LoRA adapters over them with --lora-rank R, or start from a float model");
        if (rank > 0 && TinyLlama.Training.Lora.Lora.AdaptedLayers(lm).Count > 0)
            throw new CliException($"--model: {modelPath} is a LoRA adapter, and --lora-rank {rank} would put a second adapter on its layers; train over its base model, or merge it first", isUsage: true);
        if (rank > lm.Config.HiddenSize)
            throw new CliException($"--lora-rank {rank} is larger than the model's hidden size {lm.Config.HiddenSize}", isUsage: true);
        var tok = ModelCommands.LoadTokenizer(modelPath, parse.GetValue(Tokenizer), files);
        int maxLen = parse.GetValue(MaxLength) is int m ? Math.Min(m, lm.Config.MaxPositionEmbeddings) : lm.Config.MaxPositionEmbeddings;
        ulong seed = parse.GetValue(Seed);
        var data = PreferenceData.Tokenize(PreferenceData.Read(dataPath), tok, maxLen);
        if (data.Pairs.Count == 0) throw new CliException($"{dataPath}: no usable pairs ({data.Summary()})");
        var (train, heldOut) = valFrac > 0 ? PreferenceData.SplitValidation(data.Pairs, valFrac, seed) : (data.Pairs, []);
        if (train.Count == 0) throw new CliException($"{dataPath}: no training pairs left after holding out --val-fraction {valFrac}");
        // The smallest footprint of a micro-batch: 2B sequences' logits (f32), as sft checks its own.
        long longest = train.Max(p => Math.Max(p.Chosen.Length, p.Rejected.Length));
        OptionRange.CheckMemory($"--batch-size {b} pairs with sequences of up to {longest} tokens (their logits alone)", 2.0 * b * longest * lm.Config.VocabSize * sizeof(float), "lower --batch-size or --max-length");

        var rng = new Generator(seed ^ 0x10CA);
        LoraConfig? lora = null;
        if (rank > 0)
        {
            var targets = parse.GetValue(LoraTargets)!.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
            lora = new LoraConfig(rank, parse.GetValue(LoraAlpha) ?? 2.0 * rank, dropout, targets);
            TinyLlama.Training.Lora.Lora.Apply(lm, lora, rng);
        }
        lm.CheckpointRng = rng;
        var options = new SftOptions
        {
            Steps = steps, Lr = lr, Warmup = warmup, Schedule = schedule, WeightDecay = decay, GradClip = clip, GradAccum = k, ComputeDType = computeType,
        };
        var outPath = parse.GetValue(Out)!;
        Directory.CreateDirectory(outPath);
        return new Run
        {
            Model = lm, Tokenizer = tok, Data = data, Train = train, HeldOut = heldOut, Options = options, Lora = lora, BatchSize = b,
            MaxLength = maxLen, PadId = Training.Data.SftDataLoader.InputPadId(tok), Seed = seed, Shuffle = !parse.GetValue(NoShuffle),
            Rng = rng, OutPath = outPath, AsJson = parse.GetValue(Json),
        };
    }

    /// <summary>
    /// Resumes from --resume when given, then runs the remaining steps, reporting each, with a checkpoint
    /// every --save-every steps and at the end (in OUT/checkpoint). A diverged step names the last good checkpoint.
    /// </summary>
    public void Loop(ParseResult parse, Run run, SftTrainer trainer, Action<StepLog> report)
    {
        var checkpointDir = Path.Combine(run.OutPath, "checkpoint");
        string? lastCheckpoint = null;
        void Save()
        {
            try { trainer.SaveCheckpoint(checkpointDir); }
            catch (IOException e)
            {
                throw new CliException($"{checkpointDir}: the checkpoint of step {trainer.Step} could not be written ({e.Message})"
                    + (lastCheckpoint is null ? "" : $"; the previous checkpoint is intact (continue with --resume {lastCheckpoint})"));
            }
            lastCheckpoint = checkpointDir;
        }
        if (parse.GetValue(Resume) is string resumeDir)
        {
            var nested = Path.Combine(resumeDir, "checkpoint");
            var dir = CheckpointDirectory.Recover(nested, SftTrainer.CheckpointFiles) ? nested : resumeDir;
            if (!Directory.Exists(dir)) throw new CliException($"--resume: {resumeDir} does not exist");
            trainer.LoadCheckpoint(dir);
            lastCheckpoint = dir;
        }
        int saveInterval = parse.GetValue(SaveEvery);
        while (trainer.Step < run.Options.Steps)
        {
            StepLog log;
            try { log = trainer.TrainStep(); }
            catch (TrainingDivergedException diverged) { throw SftCommand.Diverged(diverged.Message, lastCheckpoint); }
            report(log);
            if (saveInterval > 0 && log.Step % saveInterval == 0 && log.Step < run.Options.Steps) Save();
        }
        Save();
    }

    /// <summary>A step's JSON line: step, loss, the objective's metrics, lr, tokens per second.</summary>
    public static string JsonStep(StepLog log)
    {
        var fields = new List<(string, object?)> { ("step", log.Step), ("loss", log.Loss) };
        fields.AddRange(log.Metrics.Select(m => (m.Key, (object?)m.Value)));
        fields.Add(("lr", log.Lr));
        fields.Add(("tokens_per_second", Math.Round(log.TokensPerSecond, 2)));
        return JsonLine.Format([.. fields]);
    }

    /// <summary>A step's human line: step/total, loss and each metric.</summary>
    public static string TextStep(StepLog log, int total) =>
        string.Create(CultureInfo.InvariantCulture, $"step {log.Step}/{total}  loss {log.Loss:F4}") +
        string.Concat(log.Metrics.Select(m => string.Create(CultureInfo.InvariantCulture, $"  {m.Key} {m.Value:F4}")));
}
