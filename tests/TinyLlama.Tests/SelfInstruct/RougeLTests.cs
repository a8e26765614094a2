// ROUGE-L against hand-computed values (rouge_score's rougeL F-measure, default tokenizer) and the
// dynamic-programming LCS against a brute-force reference over every subsequence.
using TinyLlama.Tensors;
using TinyLlama.Training.SelfInstruct;

namespace TinyLlama.Tests.SelfInstruct;

public class RougeLTests
{
    private const double Tol = 1e-12;

    [Fact]
    public void TokenizerLowerCasesAndSplitsOnEverythingButLettersAndDigits()
    {
        Assert.Equal(["hello", "world", "it", "s", "2023"], RougeL.Tokenize("Hello, World! It's 2023"));
        Assert.Equal(["na", "ve", "caf"], RougeL.Tokenize("naïve café"));          // non-ASCII letters separate, as in rouge_score
        Assert.Empty(RougeL.Tokenize("  ?!  "));
    }

    [Theory]
    [InlineData("The cat sat.", "the cat sat", 1.0)]                            // identical after tokenising
    [InlineData("red green", "blue yellow", 0.0)]                               // disjoint
    [InlineData("the cat sat on the mat", "the cat is on the mat", 5.0 / 6)]    // LCS 5 of 6 and 6: P = R = 5/6
    [InlineData("a b c d", "a c", 2.0 / 3)]                                      // LCS 2: P = 1/2, R = 1, F = 2PR/(P+R) = 2/3
    [InlineData("a c", "a b c d", 2.0 / 3)]                                      // symmetric for b = 1
    [InlineData("c b a", "a b c", 1.0 / 3)]                                      // LCS 1 (order matters)
    [InlineData("", "abc", 0.0)]                                                 // empty prediction
    [InlineData("abc", "", 0.0)]                                                 // empty target
    [InlineData("!!!", "???", 0.0)]                                              // no tokens on either side
    public void FMeasureMatchesHandComputedValues(string prediction, string target, double expected) =>
        Assert.Equal(expected, RougeL.FMeasure(prediction, target), Tol);

    [Fact]
    public void LcsMatchesBruteForceOnRandomShortSequences()
    {
        var rng = new Generator(7);
        string[] alphabet = ["a", "b", "c"];
        for (int trial = 0; trial < 300; trial++)
        {
            var x = Enumerable.Range(0, rng.NextInt(8)).Select(_ => alphabet[rng.NextInt(3)]).ToArray();
            var y = Enumerable.Range(0, rng.NextInt(8)).Select(_ => alphabet[rng.NextInt(3)]).ToArray();
            Assert.Equal(BruteForceLcs(x, y), RougeL.LcsLength(x, y));
        }
    }

    [Fact]
    public void PoolGivesTheHighestScoreAgainstItsTexts()
    {
        var pool = new RougeLPool();
        Assert.Equal(0, pool.MaxFMeasure("anything"));
        pool.Add("red green blue");
        pool.Add("the cat sat on the mat");
        Assert.Equal(5.0 / 6, pool.MaxFMeasure("the cat is on the mat"), Tol);
        Assert.Equal(2, pool.Count);
    }

    // The longest common subsequence by trying every subsequence of x (2^|x|) for being one of y.
    private static int BruteForceLcs(string[] x, string[] y)
    {
        int best = 0;
        for (int mask = 0; mask < 1 << x.Length; mask++)
        {
            var sub = Enumerable.Range(0, x.Length).Where(i => (mask >> i & 1) == 1).Select(i => x[i]).ToArray();
            int j = 0;
            foreach (var t in y) if (j < sub.Length && sub[j] == t) j++;
            if (j == sub.Length) best = Math.Max(best, sub.Length);
        }
        return best;
    }
}
