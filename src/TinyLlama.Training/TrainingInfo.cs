// The training assembly: SFT data, LoRA, the trainer and its checkpoints.
namespace TinyLlama.Training;

/// <summary>Constants shared by the training code.</summary>
public static class TrainingInfo
{
    /// <summary>Target id that cross-entropy skips (masked prompt and padding positions), as PyTorch's default.</summary>
    public const int IgnoreIndex = -100;
}
