// The losses of preference optimisation, composed from existing ops so autograd needs no new rule.
//
// Direct Preference Optimization (Rafailov et al., "Direct Preference Optimization: Your Language Model is
// Secretly a Reward Model", 2023, eq. 7) with the variants of TRL's DPOTrainer (trl/trainer/dpo_trainer.py,
// dpo_loss). With pi and ref the summed log-probabilities of a response under the policy and the frozen
// reference, and
//
//   h = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
//
//   sigmoid  -logsigmoid(b h) (1 - e) - logsigmoid(-b h) e     (e: label smoothing, cDPO; e = 0 is DPO)
//   ipo      (h - 1 / (2 b))^2                                  (Azar et al. 2023, "A General Theoretical
//                                                                Paradigm...", eq. 17; TRL feeds it
//                                                                per-token AVERAGED log-probs, and so do we)
//   hinge    relu(1 - b h)                                      (SLiC, Zhao et al. 2023)
//
// The implicit rewards TRL logs are b (pi - ref) for each side; their margin is the chosen minus the
// rejected reward and the accuracy the fraction of pairs where it is positive.
//
// softplus(x) = log(1 + e^x) is written  relu(x) + log(1 + exp(x - 2 relu(x)))  =  max(x, 0) + log(1 + e^-|x|):
// no exponential overflows, and unlike the form with |x| its autograd gradient at x = 0 is the true 1/2
// (relu's and abs's subgradients at 0 are both 0, which would stall DPO's first step, where h = 0 exactly).
// -log sigmoid(x) = softplus(-x), which is also the reward model's pairwise loss (Ouyang et al. 2022, eq. 1).
using TinyLlama.Autograd;
using TinyLlama.Tensors;

namespace TinyLlama.Training.Preferences;

/// <summary>DPO loss variants (TRL's loss_type names).</summary>
public enum DpoLossKind
{
    /// <summary>-log sigmoid(b h), with optional label smoothing (the original DPO).</summary>
    Sigmoid,
    /// <summary>(h - 1/(2b))^2 on per-token averaged log-probabilities.</summary>
    Ipo,
    /// <summary>relu(1 - b h).</summary>
    Hinge,
}

/// <summary>The DPO losses and the stable softplus they are built from.</summary>
public static class DpoLoss
{
    /// <summary>Parses "sigmoid", "ipo" or "hinge" (case-insensitive).</summary>
    public static DpoLossKind ParseKind(string name) => name?.ToLowerInvariant() switch
    {
        "sigmoid" => DpoLossKind.Sigmoid,
        "ipo" => DpoLossKind.Ipo,
        "hinge" => DpoLossKind.Hinge,
        _ => throw new ArgumentException($"unknown DPO loss '{name}' (expected sigmoid, ipo or hinge)"),
    };

    /// <summary>softplus(x) = log(1 + e^x) elementwise, without overflow, with autograd (gradient sigmoid(x)).</summary>
    public static Tensor Softplus(Tensor x)
    {
        var positive = x.Relu();
        return positive + (1.0 + (x - positive * 2.0).Exp()).Log();
    }

    /// <summary>log sigmoid(x) = -softplus(-x) elementwise.</summary>
    public static Tensor LogSigmoid(Tensor x) => -Softplus(-x);

    /// <summary>
    /// Per-pair losses [B] from the policy's and the reference's response log-probabilities (each [B]; the
    /// reference ones are constants). Gradients flow to <paramref name="policyChosen"/> and <paramref name="policyRejected"/>.
    /// </summary>
    public static Tensor Losses(Tensor policyChosen, Tensor policyRejected, Tensor referenceChosen, Tensor referenceRejected,
        double beta, DpoLossKind kind, double labelSmoothing = 0)
    {
        Check(beta, kind, labelSmoothing);
        var h = (policyChosen - policyRejected) - (referenceChosen - referenceRejected).Detach(); // [B]
        return kind switch
        {
            DpoLossKind.Sigmoid => labelSmoothing == 0
                ? -LogSigmoid(h * beta)
                : -LogSigmoid(h * beta) * (1 - labelSmoothing) - LogSigmoid(h * -beta) * labelSmoothing,
            DpoLossKind.Ipo => (h - 1 / (2 * beta)).Square(),
            DpoLossKind.Hinge => (1.0 - h * beta).Relu(),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "unknown DPO loss"),
        };
    }

    /// <summary>Throws an <see cref="ArgumentException"/> for beta not finite and &gt; 0, or label smoothing outside [0, 0.5) or given with a loss other than sigmoid.</summary>
    public static void Check(double beta, DpoLossKind kind, double labelSmoothing)
    {
        if (!(double.IsFinite(beta) && beta > 0)) throw new ArgumentException($"DPO beta must be a finite number > 0, got {beta}");
        if (!(labelSmoothing >= 0 && labelSmoothing < 0.5)) throw new ArgumentException($"DPO label smoothing must be in [0, 0.5), got {labelSmoothing}");
        if (labelSmoothing != 0 && kind != DpoLossKind.Sigmoid) throw new ArgumentException($"label smoothing applies to the sigmoid loss only, not {kind.ToString().ToLowerInvariant()}");
    }

    /// <summary>
    /// Sum over the unmasked positions of each row of log p(target): logits (N, T, V) and int32 targets
    /// (N, T, -100 where masked) -> [N], with autograd. A row's log-probability is minus its summed
    /// cross-entropy, so this is the fused cross-entropy op applied row by row.
    /// </summary>
    public static Tensor SequenceLogProbs(Tensor logits, Tensor targets)
    {
        if (logits.Rank != 3 || targets.Rank != 2 || logits.Size(0) != targets.Size(0))
            throw new ArgumentException($"sequence log-probs need logits (N, T, V) and targets (N, T), got {Shapes.Format(logits.Shape)} and {Shapes.Format(targets.Shape)}");
        int n = logits.Size(0);
        var rows = new Tensor[n];
        for (int r = 0; r < n; r++)
            rows[r] = -Functional.CrossEntropySum(logits.Narrow(0, r, 1), targets.Narrow(0, r, 1), TrainingInfo.IgnoreIndex).Sum.Reshape(1);
        return Tensor.Concat(rows, 0);
    }
}
