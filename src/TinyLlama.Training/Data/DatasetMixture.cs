// Mixing several SFT data sets with weights, deterministically for a seed.
//
// The weights are relative shares of the mixed list (normalised to sum to 1), not repeat counts:
// with total size N, source i gets n_i examples where n_i is N * w_i rounded by the largest-remainder
// method (Hamilton's apportionment), so the n_i are exact integers that sum to N and follow the
// weights as closely as integers can. Source i then contributes
//     n_i <= |source|: a random subset of n_i examples, without repeats (down-sampling);
//     n_i >  |source|: floor(n_i / |source|) full copies plus a random subset for the rest (up-sampling).
// The chosen examples are interleaved proportionally rather than concatenated: the j-th pick of source
// i sits at key (j + 1/2) / n_i and the list is ordered by key, so every stretch of the mixed list
// holds the sources in about their weights even when it is read without shuffling.
// Everything random comes from Generators seeded with (seed, source index), so the mixture depends on
// the seed and the sources only. To resample every epoch, build again with the seed plus the epoch.
using TinyLlama.Tensors;

namespace TinyLlama.Training.Data;

/// <summary>One source of a <see cref="DatasetMixture"/>.</summary>
/// <param name="Name">For logs.</param>
/// <param name="Examples">The source's examples.</param>
/// <param name="Weight">Relative share of the mixture (positive).</param>
public sealed record MixtureComponent(string Name, IReadOnlyList<SftExample> Examples, double Weight);

/// <summary>Several example lists mixed with weights into one, deterministically for a seed.</summary>
public sealed class DatasetMixture
{
    private readonly List<MixtureComponent> components = [];

    /// <summary>The sources added so far, in order.</summary>
    public IReadOnlyList<MixtureComponent> Components => components;

    /// <summary>Adds a source with a relative weight; returns this mixture, for chaining.</summary>
    public DatasetMixture Add(IReadOnlyList<SftExample> examples, double weight, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (examples.Count == 0) throw new ArgumentException("a mixture source needs at least one example", nameof(examples));
        if (!(weight > 0) || double.IsInfinity(weight)) throw new ArgumentOutOfRangeException(nameof(weight), weight, "a mixture weight must be positive and finite");
        components.Add(new MixtureComponent(name ?? $"source {components.Count}", examples, weight));
        return this;
    }

    /// <summary>Sum of the sources' sizes: the mixture's default size.</summary>
    public int NaturalSize
    {
        get
        {
            int n = 0;
            foreach (var c in components) n += c.Examples.Count;
            return n;
        }
    }

    /// <summary>How many examples each source contributes to a mixture of <paramref name="total"/> (largest remainder).</summary>
    public int[] Counts(int total)
    {
        if (components.Count == 0) throw new InvalidOperationException("the mixture has no sources");
        ArgumentOutOfRangeException.ThrowIfNegative(total);
        double weightSum = 0;
        foreach (var c in components) weightSum += c.Weight;
        var counts = new int[components.Count];
        var remainders = new double[components.Count];
        int assigned = 0;
        for (int i = 0; i < counts.Length; i++)
        {
            double quota = total * components[i].Weight / weightSum;
            counts[i] = (int)Math.Floor(quota);
            remainders[i] = quota - counts[i];
            assigned += counts[i];
        }
        // The seats left go to the largest remainders; ties to the earlier source, so it is deterministic.
        var byRemainder = new int[counts.Length];
        for (int i = 0; i < byRemainder.Length; i++) byRemainder[i] = i;
        Array.Sort(byRemainder, (a, b) => remainders[b] != remainders[a] ? remainders[b].CompareTo(remainders[a]) : a.CompareTo(b));
        for (int k = 0; assigned < total; k++, assigned++) counts[byRemainder[k % counts.Length]]++;
        return counts;
    }

    /// <summary>
    /// The mixed list: <paramref name="total"/> examples (default <see cref="NaturalSize"/>) with each
    /// source's share given by <see cref="Counts"/>, sampled with <paramref name="seed"/> and interleaved
    /// proportionally. Same sources and seed, same list.
    /// </summary>
    public IReadOnlyList<SftExample> Build(ulong seed, int? total = null)
    {
        int size = total ?? NaturalSize;
        int[] counts = Counts(size);
        var keyed = new List<(double Key, int Source, SftExample Example)>(size);
        for (int i = 0; i < components.Count; i++)
        {
            var source = components[i].Examples;
            int n = counts[i];
            var picks = new List<SftExample>(n);
            for (int copy = 0; copy < n / source.Count; copy++) picks.AddRange(source);
            int rest = n % source.Count;
            if (rest > 0)
            {
                int[] perm = Shuffling.Permutation(source.Count, Shuffling.ForEpoch(seed, i));
                Array.Sort(perm, 0, rest); // keep the subset in source order
                for (int k = 0; k < rest; k++) picks.Add(source[perm[k]]);
            }
            for (int j = 0; j < picks.Count; j++) keyed.Add(((j + 0.5) / n, i, picks[j]));
        }
        keyed.Sort((a, b) => a.Key != b.Key ? a.Key.CompareTo(b.Key) : a.Source.CompareTo(b.Source));
        var mixed = new SftExample[keyed.Count];
        for (int k = 0; k < mixed.Length; k++) mixed[k] = keyed[k].Example;
        return mixed;
    }
}
