// Sampler's greedy choice against its definition: the first index of the largest logit, compared in f64 by a plain
// loop (-0 and +0 equal), at every length up to 300 (the vectorised argmax's tails), with ties planted at the
// maximum, maxima of zeros of both signs, and a repetition penalty (which takes the f64 path).
using TinyLlama.Generation;

namespace TinyLlama.Tests.Generation;

public class SamplerTests
{
    private static int FirstArgmax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if ((double)logits[i] > logits[best]) best = i;
        return best;
    }

    [Theory]
    [InlineData(0)] // distinct values
    [InlineData(1)] // the maximum appears two or three times
    [InlineData(2)] // every value is -0 or +0
    [InlineData(3)] // values from a small set: many ties everywhere
    public void GreedyIsTheFirstIndexOfTheLargestLogit(int kind)
    {
        var rng = new Random(71 + kind);
        var sampler = new Sampler(SamplingOptions.Greedy);
        for (int v = 1; v <= 300; v++)
            for (int trial = 0; trial < 4; trial++)
            {
                var logits = new float[v];
                for (int i = 0; i < v; i++)
                    logits[i] = kind switch
                    {
                        2 => rng.Next(2) == 0 ? 0f : -0f,
                        3 => rng.Next(-2, 3),
                        _ => (float)(rng.NextDouble() * 20 - 10),
                    };
                if (kind == 1 && v > 1)
                {
                    float top = logits[FirstArgmax(logits)];
                    for (int c = 0; c < 2; c++) logits[rng.Next(v)] = top;
                }
                Assert.Equal(FirstArgmax(logits), sampler.Sample(logits));
            }
    }

    // GreedyIndex is the greedy choice of one part of a row (a batched step's head finds it per chunk): on whole rows
    // it equals Sample, and a NaN or an infinity anywhere in the part makes it -1 (the row goes to Sample, which
    // reports it).
    [Fact]
    public void GreedyIndexIsSamplesChoiceOrMinusOneForNonFiniteParts()
    {
        var rng = new Random(5);
        var sampler = new Sampler(SamplingOptions.Greedy);
        Assert.True(sampler.IsGreedy);
        Assert.False(new Sampler(new SamplingOptions(Temperature: 0.7)).IsGreedy);
        for (int v = 1; v <= 200; v++)
        {
            var logits = new float[v];
            for (int i = 0; i < v; i++) logits[i] = rng.Next(4) == 0 ? (rng.Next(2) == 0 ? 0f : -0f) : rng.Next(-3, 3);
            Assert.Equal(FirstArgmax(logits), Sampler.GreedyIndex(logits));
            Assert.Equal(sampler.Sample(logits), Sampler.GreedyIndex(logits));
            foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
            {
                var broken = (float[])logits.Clone();
                broken[rng.Next(v)] = bad;
                Assert.Equal(-1, Sampler.GreedyIndex(broken));
                Assert.Throws<InvalidDataException>(() => sampler.Sample(broken));
            }
        }
        Assert.Equal(-1, Sampler.GreedyIndex([]));
    }

    [Fact]
    public void GreedyWithARepetitionPenaltyPenalisesPreviousTokens()
    {
        var penalised = new Sampler(new SamplingOptions(RepetitionPenalty: 2.0));
        float[] logits = [3f, 4f, 3.9f];
        Assert.Equal(1, penalised.Sample(logits));
        Assert.Equal(2, penalised.Sample(logits, [1]));    // 4 / 2 = 2 < 3.9
        Assert.Equal(0, penalised.Sample(logits, [1, 2])); // 2 and 1.95 < 3
        Assert.Equal(0, penalised.Sample([-1f, -0.6f], [1])); // a negative logit is multiplied: -1.2 < -1
    }
}
