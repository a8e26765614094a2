// Reward-model training as an objective of the shared trainer: a micro-batch of B pairs is one forward
// pass over 2B full sequences (the chosen sides, then the rejected ones), the loss is the sum over pairs of
// softplus(r_rejected - r_chosen) (RewardModel.cs), normalised by the step's pair count, and the metrics
// are the mean rewards, their margin and the accuracy (r_chosen > r_rejected), as TRL's RewardTrainer
// reports accuracy. Evaluate computes loss and accuracy on held-out pairs without gradients.
using TinyLlama.Autograd;
using TinyLlama.Tensors;
using TinyLlama.Training.Data;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Training.Preferences;

/// <summary>The pairwise loss of a <see cref="RewardModel"/> over batches of preference pairs.</summary>
public sealed class RewardObjective(RewardModel model, PreferenceDataLoader data, int padId, int maxLength) : ITrainingObjective
{
    /// <summary>The per-step metrics.</summary>
    public static readonly IReadOnlyList<string> Metrics = ["rewards/chosen", "rewards/rejected", "rewards/margins", "accuracy"];

    public string Name => "reward";

    public IReadOnlyList<string> MetricNames => Metrics;

    public IMicroBatch Next() => new Batch(model, Rows(data.Pairs, data.Next()), padId, maxLength);

    public DataLoaderState GetState() => data.GetState();

    public void SetState(DataLoaderState state) => data.SetState(state);

    /// <summary>Mean loss and accuracy over <paramref name="pairs"/> (eval mode, no gradients, <paramref name="batchSize"/> pairs per pass).</summary>
    public static (double Loss, double Accuracy) Evaluate(RewardModel model, IReadOnlyList<TokenizedPair> pairs, int batchSize, int padId, int maxLength)
    {
        if (pairs.Count == 0) throw new ArgumentException("the evaluation set has no pairs");
        var (chosen, rejected) = PairRewards(model, pairs, batchSize, padId, maxLength);
        double loss = 0, correct = 0;
        for (int i = 0; i < pairs.Count; i++)
        {
            double d = chosen[i] - rejected[i];
            loss += Math.Max(-d, 0) + Math.Log(1 + Math.Exp(-Math.Abs(d))); // softplus(-d), in f64
            if (d > 0) correct++;
        }
        return (loss / pairs.Count, correct / pairs.Count);
    }

    /// <summary>The reward of each pair's chosen and rejected side (eval mode, no gradients).</summary>
    public static (double[] Chosen, double[] Rejected) PairRewards(RewardModel model, IReadOnlyList<TokenizedPair> pairs, int batchSize, int padId, int maxLength)
    {
        var rows = new List<int[]>(2 * pairs.Count);
        rows.AddRange(pairs.Select(p => p.Chosen.InputIds));
        rows.AddRange(pairs.Select(p => p.Rejected.InputIds));
        var r = Rewards(model, rows, batchSize, padId, maxLength);
        return (r[..pairs.Count], r[pairs.Count..]);
    }

    /// <summary>The reward of each token sequence (eval mode, no gradients, <paramref name="batchSize"/> rows per pass).</summary>
    internal static double[] Rewards(RewardModel model, IReadOnlyList<int[]> rows, int batchSize, int padId, int maxLength)
    {
        var rewards = new double[rows.Count];
        bool wasTraining = model.Training;
        model.Eval();
        try
        {
            using var _ = GradMode.NoGrad();
            for (int start = 0; start < rows.Count; start += batchSize)
            {
                int n = Math.Min(batchSize, rows.Count - start);
                var (ids, lengths) = RewardModel.Collate(rows.Skip(start).Take(n).ToList(), padId, maxLength);
                model.Forward(ids, lengths).To(DType.F64).ToArray<double>().CopyTo(rewards, start);
            }
        }
        finally { model.Train(wasTraining); }
        return rewards;
    }

    // 2B rows: the chosen sides, then the rejected ones.
    private static int[][] Rows(IReadOnlyList<TokenizedPair> pairs, int[] indices)
    {
        var rows = new int[2 * indices.Length][];
        for (int i = 0; i < indices.Length; i++)
        {
            rows[i] = pairs[indices[i]].Chosen.InputIds;
            rows[indices.Length + i] = pairs[indices[i]].Rejected.InputIds;
        }
        return rows;
    }

    private sealed class Batch(RewardModel model, int[][] rows, int padId, int maxLength) : IMicroBatch
    {
        private readonly (Tensor Ids, int[] Lengths) batch = RewardModel.Collate(rows, padId, maxLength);

        public int Normalizer => rows.Length / 2;

        public long Tokens => batch.Ids.Numel;

        public ObjectiveOutput Compute()
        {
            int b = rows.Length / 2;
            var r = model.Forward(batch.Ids, batch.Lengths);             // [2B]
            var chosen = r.Narrow(0, 0, b);
            var rejected = r.Narrow(0, b, b);
            var loss = RewardModel.PairwiseLoss(chosen, rejected).Sum();
            Tensor metrics;
            using (GradMode.NoGrad())
            {
                var c = chosen.Detach().To(DType.F32);
                var j = rejected.Detach().To(DType.F32);
                var margin = c - j;
                metrics = Tensor.Concat([c.Sum().Reshape(1), j.Sum().Reshape(1), margin.Sum().Reshape(1), margin.Gt(0).Sum().Reshape(1)], 0);
            }
            return new ObjectiveOutput(loss, metrics);
        }
    }
}
