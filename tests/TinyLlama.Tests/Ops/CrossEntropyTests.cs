// Fused cross-entropy (Ops/Functional.cs, CpuBackend.Softmax.cs): values and gradients against
// -(log_softmax gathered at the targets), averaged over the targets that are not ignore_index, built from
// primitive ops; ignored rows; all rows ignored giving NaN (as PyTorch); gradients against central finite
// differences in f64 with a non-contiguous logits tensor.
using TinyLlama.Tensors;
using static TinyLlama.Tests.Infrastructure.GradCheck;

namespace TinyLlama.Tests.Ops;

public class CrossEntropyTests
{
    /// <summary>mean over non-ignored rows of -log_softmax(logits)[n, target[n]], via a one-hot mask (the "gather").</summary>
    private static Tensor CrossEntropyByPrimitives(Tensor logits, int[] targets, int ignoreIndex)
    {
        int v = logits.Size(-1), n = targets.Length;
        var onehot = new double[n * v];
        int count = 0;
        for (int i = 0; i < n; i++)
            if (targets[i] != ignoreIndex) { onehot[i * v + targets[i]] = 1; count++; }
        var mask = Tensor.FromArray(onehot, logits.Shape).To(logits.DType);
        return -(logits.LogSoftmax(-1) * mask).Sum() / count;
    }

    [Theory]
    [InlineData(-100)]
    [InlineData(3)]
    public void MatchesLogSoftmaxGatheredAtTargets(int ignoreIndex)
    {
        // 6 rows of 11 classes; rows 1 and 4 are ignored. With ignoreIndex = 3 the class 3 is never a target.
        int[] targets = [0, ignoreIndex, 10, 5, ignoreIndex, 7];
        var t = Tensor.FromArray(targets, [6]);
        var x = (RandN(1, 6, 11) * 3.0).Detach().RequiresGrad_();
        var x2 = x.Detach().Clone().RequiresGrad_();
        var loss = Functional.CrossEntropy(x, t, ignoreIndex);
        var lossRef = CrossEntropyByPrimitives(x2, targets, ignoreIndex);
        // f64, the same log-sum-exp computed in two ways: 1e-13.
        Assert.Equal(lossRef.Item(), loss.Item(), 1e-13);
        loss.Backward();
        lossRef.Backward();
        FusedAssert.Close(x2.Grad!, x.Grad!, 1e-14, 1e-12, "dlogits");
        // Ignored rows get exactly zero gradient.
        var g = x.Grad!.ToArray<double>();
        for (int j = 0; j < 11; j++) { Assert.Equal(0.0, g[11 + j]); Assert.Equal(0.0, g[44 + j]); }
    }

    [Fact]
    public void LeadingDimsAndSumVariant()
    {
        // logits [2, 3, 5] with targets [2, 3]: the same as the flattened [6, 5] problem.
        var x = RandN(2, 2, 3, 5);
        int[] targets = [4, 0, -100, 2, 2, 1];
        var loss3d = Functional.CrossEntropy(x, Tensor.FromArray(targets, [2, 3]));
        var loss2d = Functional.CrossEntropy(x.Reshape(6, 5), Tensor.FromArray(targets, [6]));
        Assert.Equal(loss2d.Item(), loss3d.Item(), 1e-15);
        var (sum, count) = Functional.CrossEntropySum(x.Reshape(6, 5), Tensor.FromArray(targets, [6]));
        Assert.Equal(5, count);
        Assert.Equal(loss2d.Item() * 5, sum.Item(), 1e-13);
    }

    [Fact]
    public void AllTargetsIgnoredGivesNaN()
    {
        var x = RandN(3, 4, 7).RequiresGrad_();
        var loss = Functional.CrossEntropy(x, Tensor.FromArray(new[] { -100, -100, -100, -100 }, [4]));
        Assert.True(double.IsNaN(loss.Item()), $"expected NaN, got {loss.Item()}");
        var (sum, count) = Functional.CrossEntropySum(x, Tensor.FromArray(new[] { -100, -100, -100, -100 }, [4]));
        Assert.Equal(0, count);
        Assert.Equal(0.0, sum.Item());
    }

    [Fact]
    public void F32MatchesF64()
    {
        // Large logits (std 20) exercise the max subtraction; f32 log-sum-exp of 1000 classes is good to
        // about 1e-6 relative of the row's magnitude (~60), so 2e-4 absolute on a mean loss of that size.
        int[] targets = [3, 999, 500, -100, 0];
        var x = Tensor.RandN([5, 1000], new Generator(4), DType.F64, std: 20);
        var t = Tensor.FromArray(targets, [5]);
        var l64 = Functional.CrossEntropy(x, t).Item();
        var l32 = Functional.CrossEntropy(x.To(DType.F32), t).Item();
        Assert.Equal(l64, l32, 2e-4);
    }

    [Fact]
    public void GradientsMatchFiniteDifferences()
    {
        // Logits stored [V, N] and transposed (non-contiguous); row 2 ignored. Default GradCheck tolerances.
        var t = Tensor.FromArray(new[] { 1, 4, -100, 0 }, [4]);
        Check(x => Functional.CrossEntropy(x[0].Transpose(0, 1), t), [RandN(5, 6, 4)]);
        // Through a scaled sum so the upstream gradient is not 1.
        Check(x => Functional.CrossEntropySum(x[0], t).Sum * 1.7, [RandN(6, 4, 6)]);
    }

    [Fact]
    public void TargetOutOfRangeIsRejected()
    {
        var e = Assert.Throws<ArgumentException>(() => Functional.CrossEntropy(Tensor.Zeros([2, 5]), Tensor.FromArray(new[] { 1, 5 }, [2])));
        Assert.Contains("cross_entropy", e.Message);
        Assert.Contains("5", e.Message);
        var e2 = Assert.Throws<ArgumentException>(() => Functional.CrossEntropy(Tensor.Zeros([2, 5]), Tensor.FromArray(new[] { 1, 2, 3 }, [3])));
        Assert.Contains("[2, 5]", e2.Message);
    }
}
