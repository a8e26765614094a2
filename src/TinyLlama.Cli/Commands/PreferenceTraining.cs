// What `reward train` and `dpo` share: the training flags (TrainerFlags, as sft's), loading the model,
// tokenizer and preference pairs, LoRA, the trainer, --resume and periodic checkpoints, and the step loop
// with its divergence message. Each verb adds its objective and what it writes at the end.
using System.CommandLine;
using System.Globalization;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Lora;
using TinyLlama.Training.Preferences;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Cli.Commands;

/// <summary>The flags of a preference-training verb and the run they describe.</summary>
internal sealed class PreferenceTraining
{
    public readonly Option<string> Model = ModelCommands.ModelOption();
    public readonly Option<string?> Tokenizer = ModelCommands.TokenizerOption();
    public readonly Option<string> Data = new("--data") { Description = "Preference pairs: JSON Lines or a JSON array of {\"prompt\", \"chosen\", \"rejected\"}", Required = true };
    public readonly Option<string> Out;
    public readonly Option<int> Steps = new("--steps") { Description = "Optimizer steps", Required = true };
    public readonly Option<int> BatchSize = new("--batch-size") { Description = "Pairs per micro-batch", DefaultValueFactory = _ => 2 };
    public readonly TrainerFlags Common = new();
    public readonly Option<bool> Json;
    public readonly Option<bool> CheckTensors = ModelCommands.CheckTensorsOption();

    public PreferenceTraining(string outDescription, string jsonDescription)
    {
        Out = new Option<string>("--out") { Description = outDescription, Required = true };
        Json = new Option<bool>("--json") { Description = jsonDescription };
    }

    /// <summary>Adds every flag to <paramref name="cmd"/>.</summary>
    public void AddTo(Command cmd)
    {
        foreach (var option in new Option[] { Model, Tokenizer, Data, Out, Steps, BatchSize }) cmd.Options.Add(option);
        Common.AddTo(cmd);
        cmd.Options.Add(Json);
        cmd.Options.Add(CheckTensors);
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
        public required TrainerSettings Settings { get; init; }
    }

    /// <summary>Checks the flags (usage errors name the flag), then loads the model, tokenizer and pairs and applies LoRA.</summary>
    public Run Load(ParseResult parse)
    {
        int steps = OptionRange.Check("--steps", parse.GetValue(Steps), 0);
        int b = OptionRange.Check("--batch-size", parse.GetValue(BatchSize), 1, TrainerFlags.MaxBatch);
        var settings = Common.Parse(parse);
        int rank = settings.LoraRank;
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
        int maxLen = settings.MaxLengthFor(lm.Config.MaxPositionEmbeddings);
        ulong seed = settings.Seed;
        double valFrac = settings.ValFraction;
        var data = PreferenceData.Tokenize(PreferenceData.Read(dataPath), tok, maxLen);
        if (data.Pairs.Count == 0) throw new CliException($"{dataPath}: no usable pairs ({data.Summary()})");
        var (train, heldOut) = valFrac > 0 ? PreferenceData.SplitValidation(data.Pairs, valFrac, seed) : (data.Pairs, []);
        if (train.Count == 0) throw new CliException($"{dataPath}: no training pairs left after holding out --val-fraction {valFrac}");
        // The smallest footprint of a micro-batch: 2B sequences' logits (f32), as sft checks its own.
        long longest = train.Max(p => Math.Max(p.Chosen.Length, p.Rejected.Length));
        OptionRange.CheckMemory($"--batch-size {b} pairs with sequences of up to {longest} tokens (their logits alone)", 2.0 * b * longest * lm.Config.VocabSize * sizeof(float), "lower --batch-size or --max-length");

        var rng = new Generator(seed ^ 0x10CA);
        var lora = settings.Lora();
        if (lora is not null) TinyLlama.Training.Lora.Lora.Apply(lm, lora, rng);
        lm.CheckpointRng = rng;
        var options = settings.Options(steps);
        var outPath = parse.GetValue(Out)!;
        Directory.CreateDirectory(outPath);
        return new Run
        {
            Model = lm, Tokenizer = tok, Data = data, Train = train, HeldOut = heldOut, Options = options, Lora = lora, BatchSize = b,
            MaxLength = maxLen, PadId = Training.Data.SftDataLoader.InputPadId(tok), Seed = seed, Shuffle = settings.Shuffle,
            Rng = rng, OutPath = outPath, AsJson = parse.GetValue(Json), Settings = settings,
        };
    }

    /// <summary>
    /// Resumes from --resume when given, then runs the remaining steps, reporting each, with a checkpoint
    /// every --save-every steps and at the end (in OUT/checkpoint). A diverged step names the last good checkpoint.
    /// </summary>
    public static void Loop(Run run, SftTrainer trainer, Action<StepLog> report)
    {
        var checkpoints = new RunCheckpoints(trainer, run.OutPath);
        if (run.Settings.Resume is string resumeDir) checkpoints.Resume(resumeDir);
        int saveInterval = run.Settings.SaveEvery;
        while (trainer.Step < run.Options.Steps)
        {
            StepLog log;
            try { log = trainer.TrainStep(); }
            catch (TrainingDivergedException diverged) { throw SftCommand.Diverged(diverged.Message, checkpoints.Last); }
            report(log);
            if (saveInterval > 0 && log.Step % saveInterval == 0 && log.Step < run.Options.Steps) checkpoints.Save();
        }
        checkpoints.Save();
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
