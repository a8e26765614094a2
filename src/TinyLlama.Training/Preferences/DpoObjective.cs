// DPO as a training objective for the shared trainer (see DpoLoss.cs for the losses and their sources).
//
// A micro-batch of B pairs is one forward pass over 2B rows, the B chosen sequences then the B rejected
// ones, batched as SFT batches are (SftDataLoader.Collate: inputs ids[..^1], targets labels[1..], prompt
// and padding masked), so each row's summed target log-probability is exactly the log-probability of its
// response tokens and EOS given the prompt.
//
// The reference log-probabilities are computed ONCE, for every pair, when the objective is built, without
// gradients, in eval mode (no dropout): with LoRA adapters on the policy they are computed with every
// adapter switched off (Lora.Disabled), i.e. by the base model, which is the reference; in a full
// fine-tune they are computed from the starting weights before the first step. Either way no second copy
// of the model exists during training, and the reference values never change (they are cached as f64
// per pair, which a resumed run recomputes from the same starting model).
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Training.Data;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Training.Preferences;

/// <summary>The settings of DPO.</summary>
/// <param name="Beta">b, the strength of the KL penalty toward the reference (TRL's default 0.1).</param>
/// <param name="Loss">sigmoid (DPO), ipo or hinge.</param>
/// <param name="LabelSmoothing">e in [0, 0.5): the assumed fraction of flipped labels (sigmoid only).</param>
/// <param name="RpoAlpha">
/// a >= 0: adds a times the chosen response's negative log-likelihood per token to each pair's loss (TRL's
/// rpo_alpha, after Pang et al. 2024, "Iterative Reasoning Preference Optimization"). DPO alone can lower the
/// chosen answer's likelihood along with the rejected one's (both share a prompt and often a prefix); the NLL
/// term keeps the chosen answer likely, which is what greedy decoding needs.
/// </param>
public sealed record DpoOptions(double Beta = 0.1, DpoLossKind Loss = DpoLossKind.Sigmoid, double LabelSmoothing = 0, double RpoAlpha = 0)
{
    /// <summary>Throws an <see cref="ArgumentException"/> naming a setting out of range.</summary>
    public void Validate()
    {
        DpoLoss.Check(Beta, Loss, LabelSmoothing);
        if (!(RpoAlpha >= 0) || double.IsInfinity(RpoAlpha)) throw new ArgumentException($"rpo alpha must be a finite number >= 0, got {RpoAlpha}");
    }
}

/// <summary>DPO over batches of preference pairs, with the reference log-probabilities cached once.</summary>
public sealed class DpoObjective : ITrainingObjective
{
    /// <summary>The per-step metrics, named as TRL logs them.</summary>
    public static readonly IReadOnlyList<string> Metrics = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"];

    private readonly LlamaForCausalLM policy;
    private readonly PreferenceDataLoader data;
    private readonly DpoOptions options;
    private readonly int padId, maxLength;
    private readonly double[] referenceChosen, referenceRejected;

    /// <summary>
    /// DPO of <paramref name="policy"/> (LoRA adapters or all weights trainable) over the pairs of
    /// <paramref name="data"/>; computes every pair's reference log-probabilities now (see the file header).
    /// </summary>
    public DpoObjective(LlamaForCausalLM policy, PreferenceDataLoader data, DpoOptions options, int padId, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(policy);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 2);
        this.policy = policy;
        this.data = data;
        this.options = options;
        this.padId = Math.Max(padId, 0);
        this.maxLength = maxLength;
        (referenceChosen, referenceRejected) = ReferenceLogProbs(policy, data.Pairs, data.BatchSize, this.padId, maxLength);
    }

    /// <summary>The cached reference log-probability (summed over the response) of each pair's chosen side, by pair index.</summary>
    public IReadOnlyList<double> ReferenceChosen => referenceChosen;

    /// <summary>The cached reference log-probability of each pair's rejected side, by pair index.</summary>
    public IReadOnlyList<double> ReferenceRejected => referenceRejected;

    public string Name => "dpo";

    public IReadOnlyList<string> MetricNames => Metrics;

    public IMicroBatch Next() => new Batch(this, data.Next());

    public DataLoaderState GetState() => data.GetState();

    public void SetState(DataLoaderState state) => data.SetState(state);

    /// <summary>
    /// The summed response log-probabilities of each pair's two sides under <paramref name="model"/> with its
    /// LoRA adapters switched off (all of it when it has none), in eval mode and without gradients.
    /// </summary>
    public static (double[] Chosen, double[] Rejected) ReferenceLogProbs(LlamaForCausalLM model, IReadOnlyList<TokenizedPair> pairs, int batchSize, int padId, int maxLength)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        var chosen = new double[pairs.Count];
        var rejected = new double[pairs.Count];
        bool wasTraining = model.Training;
        model.Eval();
        try
        {
            using var _ = GradMode.NoGrad();
            using var off = Lora.Lora.Disabled(model);
            for (int start = 0; start < pairs.Count; start += batchSize)
            {
                int b = Math.Min(batchSize, pairs.Count - start);
                var indices = Enumerable.Range(start, b).ToArray();
                var batch = Collate(pairs, indices, padId, maxLength);
                var logps = DpoLoss.SequenceLogProbs(model.Forward(batch.InputIds), batch.Targets).To(DType.F64).ToArray<double>();
                for (int i = 0; i < b; i++)
                {
                    chosen[start + i] = logps[i];
                    rejected[start + i] = logps[b + i];
                }
            }
        }
        finally { model.Train(wasTraining); }
        return (chosen, rejected);
    }

    // 2B rows: the chosen sides of the pairs, then their rejected sides.
    internal static SftBatch Collate(IReadOnlyList<TokenizedPair> pairs, int[] indices, int padId, int maxLength)
    {
        var rows = new SftExample[2 * indices.Length];
        for (int i = 0; i < indices.Length; i++)
        {
            rows[i] = pairs[indices[i]].Chosen;
            rows[indices.Length + i] = pairs[indices[i]].Rejected;
        }
        return SftDataLoader.Collate(rows, padId, maxLength);
    }

    private sealed class Batch(DpoObjective owner, int[] indices) : IMicroBatch
    {
        private readonly SftBatch batch = Collate(owner.data.Pairs, indices, owner.padId, owner.maxLength);

        public int Normalizer => indices.Length;

        public long Tokens => batch.InputIds.Numel;

        public ObjectiveOutput Compute()
        {
            int b = indices.Length;
            var o = owner.options;
            var logps = DpoLoss.SequenceLogProbs(owner.policy.Forward(batch.InputIds), batch.Targets); // [2B]
            var refs = new double[2 * b];
            var tokens = new double[2 * b];
            var pairs = owner.data.Pairs;
            for (int i = 0; i < b; i++)
            {
                refs[i] = owner.referenceChosen[indices[i]];
                refs[b + i] = owner.referenceRejected[indices[i]];
                tokens[i] = pairs[indices[i]].Chosen.TargetCount;
                tokens[b + i] = pairs[indices[i]].Rejected.TargetCount;
            }
            var reference = Tensor.FromArray(refs).To(logps.DType).To(logps.Device);              // [2B]
            var count = Tensor.FromArray(tokens).To(logps.DType).To(logps.Device);
            // The chosen sides' log-likelihood per token, for the RPO term.
            var chosenPerToken = o.RpoAlpha > 0 ? (logps / count).Narrow(0, 0, b) : null;
            if (o.Loss == DpoLossKind.Ipo)
            {
                // IPO compares per-token averages (TRL): divide policy and reference alike.
                logps = logps / count;
                reference = reference / count;
            }
            var policyChosen = logps.Narrow(0, 0, b);
            var policyRejected = logps.Narrow(0, b, b);
            var referenceChosen = reference.Narrow(0, 0, b);
            var referenceRejected = reference.Narrow(0, b, b);
            var loss = DpoLoss.Losses(policyChosen, policyRejected, referenceChosen, referenceRejected, o.Beta, o.Loss, o.LabelSmoothing).Sum();
            if (chosenPerToken is not null) loss = loss - chosenPerToken.Sum() * o.RpoAlpha;
            Tensor metrics;
            using (GradMode.NoGrad())
            {
                var chosenReward = (policyChosen.Detach() - referenceChosen) * o.Beta;       // [B]
                var rejectedReward = (policyRejected.Detach() - referenceRejected) * o.Beta; // [B]
                var margin = chosenReward - rejectedReward;
                metrics = Tensor.Concat([chosenReward.Sum().Reshape(1), rejectedReward.Sum().Reshape(1), margin.Sum().Reshape(1), margin.Gt(0).Sum().Reshape(1)], 0);
            }
            return new ObjectiveOutput(loss, metrics);
        }
    }
}
