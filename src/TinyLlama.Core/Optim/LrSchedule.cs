// Learning-rate schedules with linear warmup, as Hugging Face's get_constant_schedule_with_warmup and
// get_cosine_schedule_with_warmup define them (step s counts optimizer steps from 0):
//   warmup (s < W):  lr = base * s / W
//   constant:        lr = base
//   cosine:          lr = base * 0.5 * (1 + cos(pi * (s - W) / (S - W)))
namespace TinyLlama.Optim;

/// <summary>The shape of the schedule after warmup.</summary>
public enum LrScheduleKind { Constant, Cosine }

/// <summary>A learning rate as a function of the optimizer step.</summary>
public sealed record LrSchedule(LrScheduleKind Kind, double BaseLr, int WarmupSteps, int TotalSteps)
{
    /// <summary>The rate for step s (0-based).</summary>
    public double At(int step)
    {
        if (step < WarmupSteps) return BaseLr * step / Math.Max(1, WarmupSteps);
        if (Kind == LrScheduleKind.Constant) return BaseLr;
        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        return BaseLr * 0.5 * (1.0 + Math.Cos(Math.PI * Math.Min(1.0, progress)));
    }

    /// <summary>Parses "constant" or "cosine".</summary>
    public static LrScheduleKind ParseKind(string s) => s.ToLowerInvariant() switch
    {
        "constant" => LrScheduleKind.Constant,
        "cosine" => LrScheduleKind.Cosine,
        _ => throw new ArgumentException($"unknown schedule '{s}': expected constant or cosine"),
    };
}
