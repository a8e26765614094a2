// Inverted dropout (Functional.Dropout): the fraction of zeros matches p, survivors are scaled by
// exactly 1/(1-p), evaluation and p = 0 are the identity, the mask depends only on the seed, and the
// backward multiplies by the same mask (checked exactly, and against central finite differences in f64).
using TinyLlama.Tensors;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Ops;

public class DropoutTests
{
    [Theory]
    [InlineData(0.1)]
    [InlineData(0.5)]
    [InlineData(0.9)]
    public void MaskStatisticsMatchP(double p)
    {
        const int n = 200_000;
        var y = Functional.Dropout(Tensor.Ones([n]), p, training: true, new Generator(11)).ToArray<float>();
        int zeros = y.Count(v => v == 0);
        // The zero count is Binomial(n, p): five standard deviations is a false alarm once in ~3.5 million runs.
        double sigma = Math.Sqrt(p * (1 - p) / n);
        Assert.InRange((double)zeros / n, p - 5 * sigma, p + 5 * sigma);
        float scale = (float)(1.0 / (1.0 - p));
        Assert.All(y, v => Assert.True(v == 0 || v == scale, $"value {v} is neither 0 nor 1/(1-p) = {scale}"));
        // Inverted dropout keeps the mean: E[y] = 1.
        double mean = y.Average(v => (double)v);
        Assert.InRange(mean, 1 - 5 * sigma * scale, 1 + 5 * sigma * scale);
    }

    [Fact]
    public void SurvivorsAreScaledInputs()
    {
        const double p = 0.3;
        var x = Tensor.RandN([7, 33], new Generator(3));
        var y = Functional.Dropout(x, p, training: true, new Generator(4)).ToArray<float>();
        var xs = x.ToArray<float>();
        float scale = (float)(1.0 / (1.0 - p));
        int kept = 0;
        for (int i = 0; i < xs.Length; i++)
        {
            Assert.True(y[i] == 0 || y[i] == xs[i] * scale, $"element {i}: {y[i]} is neither 0 nor {xs[i]} * {scale}");
            if (y[i] != 0) kept++;
        }
        Assert.InRange(kept, 1, xs.Length - 1);
    }

    [Fact]
    public void EvalModeAndZeroPAreTheIdentityAndDrawNothing()
    {
        var x = Tensor.RandN([4, 5], new Generator(1));
        var gen = new Generator(9);
        var before = gen.GetState();
        Assert.Same(x, Functional.Dropout(x, 0.5, training: false, gen));
        Assert.Same(x, Functional.Dropout(x, 0.0, training: true, gen));
        Assert.Equal(before, gen.GetState());
    }

    [Fact]
    public void MaskDependsOnlyOnTheSeed()
    {
        var x = Tensor.RandN([3, 50], new Generator(1));
        var a = Functional.Dropout(x, 0.4, true, new Generator(123)).ToArray<float>();
        var b = Functional.Dropout(x, 0.4, true, new Generator(123)).ToArray<float>();
        var c = Functional.Dropout(x, 0.4, true, new Generator(124)).ToArray<float>();
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        // One generator advances: the next call gets a new mask.
        var gen = new Generator(123);
        var first = Functional.Dropout(x, 0.4, true, gen).ToArray<float>();
        var second = Functional.Dropout(x, 0.4, true, gen).ToArray<float>();
        Assert.Equal(a, first);
        Assert.NotEqual(first, second);
    }

    [Fact]
    public void MaskFollowsLogicalRowMajorOrderOfAStridedInput()
    {
        var x = Tensor.RandN([6, 9], new Generator(2)).MT; // [9, 6], non-contiguous
        var strided = Functional.Dropout(x, 0.5, true, new Generator(5)).ToArray<float>();
        var dense = Functional.Dropout(x.Contiguous(), 0.5, true, new Generator(5)).ToArray<float>();
        Assert.Equal(dense, strided);
    }

    [Fact]
    public void BackwardMultipliesByTheSameMask()
    {
        const double p = 0.25;
        var x = Tensor.RandN([5, 12], new Generator(6)).RequiresGrad_();
        var y = Functional.Dropout(x, p, true, new Generator(8));
        var u = Tensor.RandN([5, 12], new Generator(10));
        y.Backward(u);
        var ys = y.ToArray<float>();
        var us = u.ToArray<float>();
        var dx = x.Grad!.ToArray<float>();
        float scale = (float)(1.0 / (1.0 - p));
        for (int i = 0; i < ys.Length; i++)
        {
            // x is normal, so y = 0 exactly where the mask dropped the element.
            float expected = ys[i] == 0 ? 0 : us[i] * scale;
            Assert.Equal(expected, dx[i]);
        }
    }

    [Fact]
    public void GradientMatchesFiniteDifferences()
    {
        // A fresh generator with the same seed in every call gives every evaluation the same mask.
        GradCheck.Check(xs => Functional.Dropout(xs[0], 0.3, true, new Generator(21)), [GradCheck.RandN(1, 4, 7)]);
    }

    [Fact]
    public void HalfInputsKeepTheirDtypeAndTheMask()
    {
        var x = Tensor.RandN([3, 40], new Generator(1));
        var y32 = Functional.Dropout(x, 0.5, true, new Generator(2)).ToArray<float>();
        var y16 = Functional.Dropout(x.To(DType.BF16), 0.5, true, new Generator(2));
        Assert.Equal(DType.BF16, y16.DType);
        var ys = y16.ToArray<float>();
        for (int i = 0; i < ys.Length; i++) Assert.Equal(y32[i] == 0, ys[i] == 0);
    }

    [Theory]
    [InlineData(-0.1)]
    [InlineData(1.0)]
    [InlineData(double.NaN)]
    public void ProbabilityOutsideZeroToOneIsRejected(double p)
    {
        var x = Tensor.Ones([3]);
        Assert.Throws<ArgumentOutOfRangeException>(() => Functional.Dropout(x, p, true, new Generator(1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => Functional.Dropout(x, p, false, new Generator(1)));
    }
}
