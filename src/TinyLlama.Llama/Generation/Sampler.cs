// Next-token sampling from logits, in the order Hugging Face's generate applies its processors:
// repetition penalty (CTRL, Keskar et al. 2019) -> temperature -> top-k -> top-p (nucleus, Holtzman
// et al. 2020) -> draw. Temperature 0 is greedy (argmax, first index on ties).
using TinyLlama.Tensors;

namespace TinyLlama.Generation;

/// <summary>Sampling settings.</summary>
/// <param name="Temperature">0 for greedy decoding; otherwise logits are divided by it.</param>
/// <param name="TopK">Keep only the k most likely tokens (0 = all).</param>
/// <param name="TopP">Keep the smallest set of most likely tokens whose probability reaches p (1 = all).</param>
/// <param name="RepetitionPenalty">Divides positive (multiplies negative) logits of tokens already present (1 = off).</param>
/// <param name="Seed">Seed of the sampling generator: the same seed gives the same text.</param>
public sealed record SamplingOptions(double Temperature = 0, int TopK = 0, double TopP = 1.0, double RepetitionPenalty = 1.0, ulong Seed = 0)
{
    /// <summary>Greedy decoding.</summary>
    public static SamplingOptions Greedy { get; } = new();

    /// <summary>Throws a one-line ArgumentException naming the bad setting.</summary>
    public void Validate()
    {
        if (!(Temperature >= 0) || double.IsInfinity(Temperature)) throw new ArgumentException($"temperature must be >= 0, got {Temperature}");
        if (TopK < 0) throw new ArgumentException($"top-k must be >= 0, got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"top-p must be in (0, 1], got {TopP}");
        if (!(RepetitionPenalty > 0) || double.IsInfinity(RepetitionPenalty)) throw new ArgumentException($"repetition penalty must be > 0, got {RepetitionPenalty}");
    }
}

/// <summary>Turns one position's logits into a token id.</summary>
public sealed class Sampler
{
    private readonly SamplingOptions options;
    private readonly Generator rng;
    private double[] scratch = [];
    private int[] order = [];

    /// <summary>
    /// Throws a one-line <see cref="InvalidDataException"/> when <paramref name="logits"/> hold a NaN or an infinity:
    /// a model with non-finite weights (or activations that overflow) computes them, and any token or score
    /// drawn from them would be meaningless (argmax of NaNs is token 0, &lt;unk&gt;).
    /// </summary>
    public static void CheckFinite(ReadOnlySpan<float> logits)
    {
        int i = NonFinite(logits);
        if (i >= 0)
            throw new InvalidDataException($"the model computed a {(float.IsNaN(logits[i]) ? "NaN" : "infinite")} logit (token {i}): its weights hold NaN or infinite values, or its activations overflow (--check-tensors scans the weights)");
    }

    /// <summary>
    /// The greedy token of <paramref name="part"/> (the first index holding its largest value, -0 == +0, as
    /// <see cref="Sample"/> picks), or -1 when it holds a NaN or an infinity. Parts of one row of logits combine in
    /// order: the first part whose value at its index is largest (later parts only by a strictly larger value) gives
    /// the row's greedy token, and any -1 makes the row an error for <see cref="Sample"/> to report.
    /// </summary>
    public static int GreedyIndex(ReadOnlySpan<float> part) => part.IsEmpty || NonFinite(part) >= 0 ? -1 : FirstIndexOfMax(part);

    // The index of a NaN or an infinity in x, or -1 when it has none: the element of largest magnitude is the first
    // NaN, if any, or an infinity exactly when one exists.
    private static int NonFinite(ReadOnlySpan<float> x)
    {
        int i = System.Numerics.Tensors.TensorPrimitives.IndexOfMaxMagnitude(x);
        return i >= 0 && !float.IsFinite(x[i]) ? i : -1;
    }

    // IndexOfMax ranks +0 above -0; the first index holding the maximum's value (-0 == +0) is the loop's answer.
    private static int FirstIndexOfMax(ReadOnlySpan<float> x) => x.IndexOf(x[System.Numerics.Tensors.TensorPrimitives.IndexOfMax(x)]);

    /// <summary>True when <see cref="Sample"/> without previous ids is the greedy argmax (temperature 0).</summary>
    public bool IsGreedy => options.Temperature == 0;

    public Sampler(SamplingOptions options)
    {
        options.Validate();
        this.options = options;
        rng = new Generator(options.Seed);
    }

    /// <summary>
    /// Picks the next token from logits [V]; <paramref name="previous"/> are the ids seen so far (for the repetition
    /// penalty). Logits holding NaN or infinity are an error (<see cref="CheckFinite"/>), not a token.
    /// </summary>
    public int Sample(ReadOnlySpan<float> logits, IReadOnlyCollection<int>? previous = null)
    {
        CheckFinite(logits);
        int v = logits.Length;
        // Greedy without a penalty: the argmax of the floats themselves (the widening below is exact, so this is the
        // same token), vectorised; a batched server samples every row of every step, so this runs per token.
        if (options.Temperature == 0 && (options.RepetitionPenalty == 1.0 || previous is null))
            return v == 0 ? 0 : FirstIndexOfMax(logits);
        if (scratch.Length != v) { scratch = new double[v]; order = new int[v]; }
        var x = scratch;
        for (int i = 0; i < v; i++) x[i] = logits[i];
        if (options.RepetitionPenalty != 1.0 && previous is not null)
        {
            foreach (int id in previous.Distinct())
                if ((uint)id < (uint)v) x[id] = x[id] > 0 ? x[id] / options.RepetitionPenalty : x[id] * options.RepetitionPenalty;
        }
        if (options.Temperature == 0)
        {
            int best = 0;
            for (int i = 1; i < v; i++) if (x[i] > x[best]) best = i;
            return best;
        }
        double max = double.NegativeInfinity;
        for (int i = 0; i < v; i++) { x[i] /= options.Temperature; max = Math.Max(max, x[i]); }
        // Candidates sorted by logit, descending (stable on ties: lower id first).
        for (int i = 0; i < v; i++) order[i] = i;
        Array.Sort(order, (a, b) => x[b].CompareTo(x[a]) is int c && c != 0 ? c : a.CompareTo(b));
        int keep = options.TopK > 0 ? Math.Min(options.TopK, v) : v;
        double total = 0;
        for (int r = 0; r < keep; r++) total += Math.Exp(x[order[r]] - max);
        if (options.TopP < 1.0)
        {
            double cumulative = 0;
            for (int r = 0; r < keep; r++)
            {
                cumulative += Math.Exp(x[order[r]] - max) / total;
                if (cumulative >= options.TopP) { keep = r + 1; break; }
            }
            total = 0;
            for (int r = 0; r < keep; r++) total += Math.Exp(x[order[r]] - max);
        }
        double u = rng.NextDouble() * total, acc = 0;
        for (int r = 0; r < keep; r++)
        {
            acc += Math.Exp(x[order[r]] - max);
            if (u < acc) return order[r];
        }
        return order[keep - 1];
    }
}
