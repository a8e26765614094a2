// The flags every training verb (sft, reward train, dpo) shares, declared once with their ranges: the
// optimizer and its schedule, accumulation, mixed precision, truncation, LoRA, the seed, the held-out
// fraction, checkpoints and --resume. A value outside its range is a usage error naming the flag.
using System.CommandLine;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Training.Lora;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Cli.Commands;

/// <summary>The training flags shared by sft, reward train and dpo.</summary>
internal sealed class TrainerFlags
{
    // Upper ends of the flags' ranges: far beyond any run that fits in memory, small enough to multiply safely.
    public const int MaxBatch = 1 << 20;
    private const int MaxLoraRank = 1 << 16;

    public readonly Option<double> Lr = new("--lr") { Description = "Peak learning rate", Required = true };
    public readonly Option<int> Warmup = new("--warmup") { Description = "Linear warmup steps" };
    public readonly Option<string> Schedule = new("--schedule") { Description = "constant or cosine", DefaultValueFactory = _ => "constant" };
    public readonly Option<double> WeightDecay = new("--weight-decay") { Description = "AdamW decoupled weight decay (default 0)" };
    public readonly Option<double> GradClip = new("--grad-clip") { Description = "Clip the global gradient norm (0 or absent = off)" };
    public readonly Option<int> GradAccum = new("--grad-accum") { Description = "Micro-batches per optimizer step", DefaultValueFactory = _ => 1 };
    public readonly Option<bool> NoShuffle = new("--no-shuffle") { Description = "Consecutive records in file order" };
    public readonly Option<ulong> Seed = new("--seed") { Description = "Seed for shuffling, LoRA init and dropout" };
    public readonly Option<string> ComputeType = new("--dtype") { Description = "f32, or bf16/f16 mixed precision (f32 master weights)", DefaultValueFactory = _ => "f32" };
    public readonly Option<int?> MaxLength = new("--max-length") { Description = "Truncate sequences to this many tokens (default: the model's context)" };
    public readonly Option<int> LoraRank = new("--lora-rank") { Description = "Train LoRA adapters of this rank instead of all weights" };
    public readonly Option<double?> LoraAlpha = new("--lora-alpha") { Description = "LoRA alpha (default 2 x rank)" };
    public readonly Option<double> LoraDropout = new("--lora-dropout") { Description = "Dropout on the LoRA input" };
    public readonly Option<string> LoraTargets = new("--lora-targets") { Description = "Comma-separated: q,k,v,o,gate,up,down", DefaultValueFactory = _ => "q,v" };
    public readonly Option<string?> Resume = new("--resume") { Description = "Continue a run from its output directory (or its checkpoint/)" };
    public readonly Option<double> ValFraction = new("--val-fraction") { Description = "Hold out this fraction of the data for validation" };
    public readonly Option<int> SaveEvery = new("--save-every") { Description = "Write a resumable checkpoint every N steps (always at the end)" };

    /// <summary>Every shared flag, in help order.</summary>
    public IEnumerable<Option> All =>
    [
        Lr, Warmup, Schedule, WeightDecay, GradClip, GradAccum, NoShuffle, Seed, ComputeType, MaxLength,
        LoraRank, LoraAlpha, LoraDropout, LoraTargets, Resume, ValFraction, SaveEvery,
    ];

    /// <summary>Adds every shared flag to <paramref name="cmd"/>.</summary>
    public void AddTo(Command cmd)
    {
        foreach (var option in All) cmd.Options.Add(option);
    }

    /// <summary>Reads and range-checks the shared flags (before any file is touched).</summary>
    public TrainerSettings Parse(ParseResult parse)
    {
        int k = OptionRange.Check("--grad-accum", parse.GetValue(GradAccum), 1, MaxBatch);
        double lr = OptionRange.Check("--lr", parse.GetValue(Lr), 0, double.PositiveInfinity, minOpen: true);
        int warmup = OptionRange.Check("--warmup", parse.GetValue(Warmup), 0);
        double decay = OptionRange.Check("--weight-decay", parse.GetValue(WeightDecay), 0, double.PositiveInfinity);
        double clip = OptionRange.Check("--grad-clip", parse.GetValue(GradClip), 0, double.PositiveInfinity);
        int? maxLength = parse.GetValue(MaxLength) is int ml ? OptionRange.Check("--max-length", ml, 2) : null;
        double? alpha = parse.GetValue(LoraAlpha) is double a ? OptionRange.Check("--lora-alpha", a, 0, double.PositiveInfinity, minOpen: true) : null;
        double dropout = OptionRange.Check("--lora-dropout", parse.GetValue(LoraDropout), 0, 1, maxOpen: true);
        int saveEvery = OptionRange.Check("--save-every", parse.GetValue(SaveEvery), 0);
        LrScheduleKind schedule;
        try { schedule = LrSchedule.ParseKind(parse.GetValue(Schedule)!); }
        catch (ArgumentException e) { throw new CliException("--schedule: " + e.Message, isUsage: true); }
        DType computeType;
        try { computeType = DTypes.Parse(parse.GetValue(ComputeType)!); }
        catch (ArgumentException e) { throw new CliException("--dtype: " + e.Message, isUsage: true); }
        if (computeType is not (DType.F32 or DType.BF16 or DType.F16)) throw new CliException("--dtype must be f32, bf16 or f16", isUsage: true);
        double valFraction = OptionRange.Check("--val-fraction", parse.GetValue(ValFraction), 0, 1, maxOpen: true);
        int rank = OptionRange.Check("--lora-rank", parse.GetValue(LoraRank), 0, MaxLoraRank);
        var targets = parse.GetValue(LoraTargets)!.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        return new TrainerSettings(lr, warmup, schedule, decay, clip, k, computeType, maxLength, rank, alpha, dropout, targets,
            parse.GetValue(Seed), !parse.GetValue(NoShuffle), valFraction, saveEvery, parse.GetValue(Resume));
    }
}

/// <summary>The values of <see cref="TrainerFlags"/>, checked.</summary>
internal sealed record TrainerSettings(
    double Lr, int Warmup, LrScheduleKind Schedule, double WeightDecay, double GradClip, int GradAccum, DType ComputeType, int? MaxLength,
    int LoraRank, double? LoraAlpha, double LoraDropout, string[] LoraTargets, ulong Seed, bool Shuffle, double ValFraction, int SaveEvery, string? Resume)
{
    /// <summary>The trainer's options for a run of <paramref name="steps"/> steps.</summary>
    public SftOptions Options(int steps) => new()
    {
        Steps = steps, Lr = Lr, Warmup = Warmup, Schedule = Schedule, WeightDecay = WeightDecay, GradClip = GradClip, GradAccum = GradAccum, ComputeDType = ComputeType,
    };

    /// <summary>The LoRA configuration (alpha 2 x rank unless given), or null without --lora-rank.</summary>
    public LoraConfig? Lora() => LoraRank > 0 ? new LoraConfig(LoraRank, LoraAlpha ?? 2.0 * LoraRank, LoraDropout, LoraTargets) : null;

    /// <summary>--max-length, at most the model's context (the context when not given).</summary>
    public int MaxLengthFor(int context) => MaxLength is int m ? Math.Min(m, context) : context;
}
