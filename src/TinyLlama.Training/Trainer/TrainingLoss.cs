// Pluggable training objectives. Each returns the SUM of its per-token losses over a batch's targets;
// the trainer divides by the number of targets in the whole optimizer step, so gradient accumulation
// gives exactly the mean over all unmasked tokens, as one large batch would.
//
// Distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015):
//   loss = (1 - w) * CE(student, targets) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))
// summed over the target positions; the T^2 factor keeps gradient magnitudes comparable across T.
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Training.Data;

namespace TinyLlama.Training.Trainer;

/// <summary>A training objective over one batch.</summary>
public interface ITrainingLoss
{
    /// <summary>Short name for logs.</summary>
    string Name { get; }

    /// <summary>Sum of per-token losses over the batch's targets (a scalar with autograd).</summary>
    Tensor SumLoss(LlamaForCausalLM model, SftBatch batch);
}

/// <summary>Next-token cross-entropy on the unmasked targets.</summary>
public sealed class CrossEntropyLoss : ITrainingLoss
{
    public string Name => "cross_entropy";

    public Tensor SumLoss(LlamaForCausalLM model, SftBatch batch) =>
        Functional.CrossEntropySum(model.Forward(batch.InputIds), batch.Targets, TrainingInfo.IgnoreIndex).Sum;
}

/// <summary>Cross-entropy mixed with KL divergence to a frozen teacher's softened distribution.</summary>
public sealed class DistillationLoss : ITrainingLoss
{
    private readonly LlamaForCausalLM teacher;

    public DistillationLoss(LlamaForCausalLM teacher, double temperature, double weight)
    {
        if (!(temperature > 0)) throw new ArgumentException($"distillation temperature must be > 0, got {temperature}");
        if (weight is < 0 or > 1) throw new ArgumentException($"distillation weight must be in [0, 1], got {weight}");
        this.teacher = teacher;
        Temperature = temperature;
        Weight = weight;
        foreach (var p in teacher.Parameters()) if (p.IsLeaf) p.RequiresGrad = false;
        teacher.Eval();
    }

    public double Temperature { get; }
    public double Weight { get; }
    public string Name => "distillation";

    public Tensor SumLoss(LlamaForCausalLM model, SftBatch batch)
    {
        if (teacher.Config.VocabSize != model.Config.VocabSize)
            throw new ArgumentException($"teacher vocabulary ({teacher.Config.VocabSize}) differs from the student's ({model.Config.VocabSize})");
        var logits = model.Forward(batch.InputIds);                                  // (B, T, V)
        var ce = Functional.CrossEntropySum(logits, batch.Targets, TrainingInfo.IgnoreIndex).Sum;
        Tensor teacherLogits;
        using (GradMode.NoGrad()) teacherLogits = teacher.Forward(batch.InputIds);   // (B, T, V)
        double t = Temperature;
        var logPs = (logits.To(DType.F32) / t).LogSoftmax(-1);                     // student log-probs
        Tensor pT, logPt;
        using (GradMode.NoGrad())
        {
            logPt = (teacherLogits.To(DType.F32) / t).LogSoftmax(-1);
            pT = logPt.Exp();
        }
        var kl = (pT * (logPt - logPs)).Sum(-1);                                     // (B, T)
        var mask = batch.Targets.To(DType.F32).Ne(TrainingInfo.IgnoreIndex);      // (B, T) 1 on targets
        var kd = (kl * mask).Sum() * (t * t);
        return ce * (1 - Weight) + kd * Weight;
    }
}
