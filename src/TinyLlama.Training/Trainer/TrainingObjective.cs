// What the trainer's step needs from a training objective, so that supervised fine-tuning, the reward
// model and DPO share one optimizer step, schedule, accumulation, divergence checks and checkpoints.
//
// An objective draws micro-batches and turns each into the SUM of its per-item losses (items are target
// tokens for SFT, preference pairs for the reward model and DPO) together with the number of items. The
// trainer adds the counts of the step's K micro-batches (all-reduced across processes) and back-propagates
// each sum divided by that total, so K micro-batches give exactly the mean of one large batch:
//
//   loss_step = (sum_k SumLoss_k) / (sum_k Normalizer_k)
//
// Per-step metrics (DPO's reward margins, a reward model's accuracy) are summed over items the same way,
// as a detached vector that stays on the device until the step ends, and are reported as means.
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Training.Data;

namespace TinyLlama.Training.Trainer;

/// <summary>A training objective together with the data it draws micro-batches from.</summary>
public interface ITrainingObjective
{
    /// <summary>Short name for logs and errors ("sft", "dpo", "reward").</summary>
    string Name { get; }

    /// <summary>The per-item metrics that <see cref="ObjectiveOutput.MetricSums"/> holds, in order (may be empty).</summary>
    IReadOnlyList<string> MetricNames { get; }

    /// <summary>Draws the next micro-batch (advancing the data position).</summary>
    IMicroBatch Next();

    /// <summary>The data position, saved in checkpoints.</summary>
    DataLoaderState GetState();

    /// <summary>Continues from a saved data position (validating it before anything changes).</summary>
    void SetState(DataLoaderState state);
}

/// <summary>One micro-batch of an <see cref="ITrainingObjective"/>.</summary>
public interface IMicroBatch
{
    /// <summary>Items the loss is a mean over (target tokens, pairs); 0 when nothing in it is trained on.</summary>
    int Normalizer { get; }

    /// <summary>Input tokens the forward pass processes (for tokens per second).</summary>
    long Tokens { get; }

    /// <summary>The summed loss with autograd, and the detached metric sums. Called once, with gradients enabled.</summary>
    ObjectiveOutput Compute();
}

/// <summary>What a micro-batch computes.</summary>
/// <param name="SumLoss">Scalar: the sum of the per-item losses, with autograd.</param>
/// <param name="MetricSums">Detached [M] sums over the items of <see cref="ITrainingObjective.MetricNames"/>, or null when M = 0.</param>
public readonly record struct ObjectiveOutput(Tensor SumLoss, Tensor? MetricSums);

/// <summary>Supervised fine-tuning: an <see cref="ITrainingLoss"/> over the batches of an <see cref="SftDataLoader"/>.</summary>
public sealed class SftObjective(LlamaForCausalLM model, SftDataLoader data, ITrainingLoss loss) : ITrainingObjective
{
    /// <summary>The loss (cross-entropy, distillation).</summary>
    public ITrainingLoss Loss => loss;

    public string Name => "sft";

    public IReadOnlyList<string> MetricNames => [];

    public IMicroBatch Next() => new Batch(model, loss, data.Next());

    public DataLoaderState GetState() => data.GetState();

    public void SetState(DataLoaderState state) => data.SetState(state);

    private sealed class Batch(LlamaForCausalLM model, ITrainingLoss loss, SftBatch batch) : IMicroBatch
    {
        public int Normalizer => batch.TargetCount;

        public long Tokens => batch.InputIds.Numel;

        public ObjectiveOutput Compute() => new(loss.SumLoss(model, batch), null);
    }
}
