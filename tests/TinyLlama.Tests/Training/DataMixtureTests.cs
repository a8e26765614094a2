// Dataset mixtures (largest-remainder counts, seeded sampling, proportional interleaving) and the
// validation split (deterministic, disjoint, whole records on one side).
using TinyLlama.Training.Data;
using static TinyLlama.Tests.Training.DataTestUtil;

namespace TinyLlama.Tests.Training;

public class DataMixtureTests
{
    private static List<SftExample> Source(string name, int count) =>
        [.. Enumerable.Range(0, count).Select(i => Synthetic($"{name}:{i + 1}", 4, 10 * i, 1))];

    private static int CountFrom(IEnumerable<SftExample> examples, string name) => examples.Count(e => e.Source.StartsWith(name + ":"));

    [Fact]
    public void Counts_FollowTheWeights_ByLargestRemainder()
    {
        var mix = new DatasetMixture().Add(Source("a", 10), 3).Add(Source("b", 10), 1);
        Assert.Equal([75, 25], mix.Counts(100));
        Assert.Equal([15, 5], mix.Counts(20));
        Assert.Equal([8, 2], mix.Counts(10));        // 7.5 / 2.5: tie on remainder goes to the first source
        var thirds = new DatasetMixture().Add(Source("a", 1), 1).Add(Source("b", 1), 1).Add(Source("c", 1), 1);
        Assert.Equal([4, 3, 3], thirds.Counts(10));
        var skewed = new DatasetMixture().Add(Source("a", 1), 0.6).Add(Source("b", 1), 0.3).Add(Source("c", 1), 0.1);
        Assert.Equal([6, 3, 1], skewed.Counts(10));
        Assert.Equal([4, 2, 1], skewed.Counts(7));   // 4.2, 2.1, 0.7 -> the free seat goes to c
    }

    [Fact]
    public void Build_RespectsCounts_IsDeterministicPerSeed_AndInterleaves()
    {
        var a = Source("a", 40);
        var b = Source("b", 4);
        var mix = new DatasetMixture().Add(a, 3, "a").Add(b, 1, "b");
        var mixed = mix.Build(seed: 5, total: 40);
        Assert.Equal(40, mixed.Count);
        Assert.Equal(30, CountFrom(mixed, "a"));       // down-sampled: 30 distinct of 40
        Assert.Equal(30, mixed.Where(e => e.Source.StartsWith("a:")).Distinct().Count());
        Assert.Equal(10, CountFrom(mixed, "b"));       // up-sampled: 4 + 4 + 2 of 4
        Assert.All(b, e => Assert.True(mixed.Count(m => ReferenceEquals(m, e)) >= 2));

        Assert.Equal(mixed, mix.Build(5, 40));
        Assert.NotEqual(mixed.Select(e => e.Source), mix.Build(6, 40).Select(e => e.Source));
        // Proportional interleaving: every window of 8 holds 6 from a and 2 from b.
        for (int start = 0; start + 8 <= mixed.Count; start += 8)
            Assert.Equal(2, CountFrom(mixed.Skip(start).Take(8), "b"));
        // Default size: the sum of the sources.
        Assert.Equal(44, mix.Build(5).Count);
    }

    [Fact]
    public void SplitValidation_IsDeterministicDisjointAndComplete()
    {
        var examples = Source("d", 50);
        var (train, validation) = SftDataset.SplitValidation(examples, 0.2, seed: 11);
        Assert.Equal(10, validation.Count);
        Assert.Equal(40, train.Count);
        Assert.Empty(train.Select(e => e.Source).Intersect(validation.Select(e => e.Source)));
        Assert.Equal(examples.Select(e => e.Source).Order(), train.Concat(validation).Select(e => e.Source).Order());
        // Both sides keep the input order.
        Assert.Equal(train.OrderBy(e => examples.IndexOf(e)), train);

        var again = SftDataset.SplitValidation(examples, 0.2, 11);
        Assert.Equal(validation, again.Validation);
        Assert.Equal(train, again.Train);
        Assert.NotEqual(validation, SftDataset.SplitValidation(examples, 0.2, 12).Validation);

        var byCount = SftDataset.SplitValidation(examples, 7, 11);
        Assert.Equal(7, byCount.Validation.Count);
        Assert.Single(SftDataset.SplitValidation(examples, 0.001, 11).Validation); // a positive fraction gives at least one
        Assert.Empty(SftDataset.SplitValidation(examples, 0.0, 11).Validation);
        Assert.Throws<ArgumentOutOfRangeException>(() => SftDataset.SplitValidation(examples, 50, 11));
        Assert.Throws<ArgumentOutOfRangeException>(() => SftDataset.SplitValidation(examples, 1.0, 11));
    }

    [Fact]
    public void SplitValidation_KeepsThePiecesOfOneRecordTogether()
    {
        // Three pieces of a split conversation share a source; they must land on one side together.
        var examples = new List<SftExample>();
        for (int r = 0; r < 20; r++)
            for (int piece = 0; piece < 3; piece++)
                examples.Add(Synthetic($"c.jsonl:{r + 1}", 4, 10 * piece, 1));
        for (ulong seed = 0; seed < 5; seed++)
        {
            var (train, validation) = SftDataset.SplitValidation(examples, 5, seed);
            Assert.Equal(15, validation.Count);
            Assert.Equal(45, train.Count);
            Assert.Empty(train.Select(e => e.Source).Intersect(validation.Select(e => e.Source)));
        }
    }
}
