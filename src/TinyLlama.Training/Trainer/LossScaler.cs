// Dynamic loss scaling for f16 training (Micikevicius et al., "Mixed Precision Training", 2018;
// torch.cuda.amp.GradScaler): multiply the loss by S so small gradients survive f16, divide the
// gradients by S before the update, and skip the step (halving S) whenever a gradient overflowed;
// after GrowthInterval clean steps S doubles again.
namespace TinyLlama.Training.Trainer;

/// <summary>The loss scale and its update rule.</summary>
public sealed class DynamicLossScaler
{
    public DynamicLossScaler(double initialScale = 65536, int growthInterval = 2000)
    {
        Scale = initialScale;
        GrowthInterval = growthInterval;
    }

    public double Scale { get; private set; }
    public int GrowthInterval { get; }

    /// <summary>Clean steps since the last change.</summary>
    public int GoodSteps { get; private set; }

    /// <summary>Records a step: overflow halves the scale (the step is skipped), else it may grow.</summary>
    public void Update(bool overflowed)
    {
        if (overflowed)
        {
            Scale = Math.Max(1.0, Scale * 0.5);
            GoodSteps = 0;
            return;
        }
        if (++GoodSteps >= GrowthInterval)
        {
            Scale *= 2;
            GoodSteps = 0;
        }
    }

    /// <summary>Restores a saved state.</summary>
    public void Restore(double scale, int goodSteps)
    {
        Scale = scale;
        GoodSteps = goodSteps;
    }
}
