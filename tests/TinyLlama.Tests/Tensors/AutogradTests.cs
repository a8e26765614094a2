// Autograd engine semantics: accumulation across calls, retained graphs, errors, NoGrad, Detach, RetainGrad.
using TinyLlama.Autograd;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Tensors;

public class AutogradTests
{
    [Fact]
    public void GradAccumulatesAcrossBackwardCallsAndZeroGradClears()
    {
        var x = Tensor.FromArray(new double[] { 1, 2, 3 }).RequiresGrad_();
        (x * x).Sum().Backward();
        (x * 3.0).Sum().Backward();
        Assert.Equal(new double[] { 5, 7, 9 }, x.Grad!.ToArray<double>());
        x.ZeroGrad();
        Assert.Null(x.Grad);
    }

    [Fact]
    public void BackwardTwiceThroughFreedGraphIsAClearError()
    {
        var x = Tensor.FromArray(new double[] { 1, 2 }).RequiresGrad_();
        var y = (x.Exp() * x).Sum();
        y.Backward();
        var e = Assert.Throws<InvalidOperationException>(() => y.Backward());
        Assert.Contains("second time", e.Message);
    }

    [Fact]
    public void RetainGraphAllowsASecondBackward()
    {
        var x = Tensor.FromArray(new double[] { 1, 2 }).RequiresGrad_();
        var y = (x.Exp() * x).Sum();
        y.Backward(retainGraph: true);
        var first = x.Grad!.ToArray<double>();
        y.Backward();
        var second = x.Grad!.ToArray<double>();
        for (int i = 0; i < 2; i++) Assert.Equal(2 * first[i], second[i], 12);
    }

    [Fact]
    public void NonScalarBackwardNeedsAGradient()
    {
        var x = Tensor.FromArray(new double[] { 1, 2 }).RequiresGrad_();
        var y = x * 2.0;
        var e = Assert.Throws<InvalidOperationException>(() => y.Backward());
        Assert.Contains("scalar", e.Message);
        y.Backward(Tensor.FromArray(new double[] { 1, 10 }));
        Assert.Equal(new double[] { 2, 20 }, x.Grad!.ToArray<double>());
    }

    [Fact]
    public void NoGradAndDetachRecordNothing()
    {
        var x = Tensor.FromArray(new double[] { 1, 2 }).RequiresGrad_();
        using (GradMode.NoGrad())
        {
            var y = x * 2.0;
            Assert.False(y.RequiresGrad);
            Assert.Null(y.GradFn);
        }
        var z = x.Detach() * 2.0;
        Assert.False(z.RequiresGrad);
        Assert.True((x * 2.0).RequiresGrad);
        Assert.Equal("MulBackward", (x * 2.0).GradFn!.Name);
    }

    [Fact]
    public void RetainGradKeepsIntermediateGradient()
    {
        var x = Tensor.FromArray(new double[] { 1, 2 }).RequiresGrad_();
        var h = x * 3.0;
        h.RetainGrad();
        (h * h).Sum().Backward();
        Assert.Equal(new double[] { 6, 12 }, h.Grad!.ToArray<double>());
        Assert.Equal(new double[] { 18, 36 }, x.Grad!.ToArray<double>());
    }

    [Fact]
    public void InPlaceUpdateOfALeafThatRequiresGradIsRejectedOutsideNoGrad()
    {
        var x = Tensor.FromArray(new double[] { 1, 2 }).RequiresGrad_();
        Assert.Throws<InvalidOperationException>(() => x.Mul_(2));
        using (GradMode.NoGrad()) x.Mul_(2);
        Assert.Equal(new double[] { 2, 4 }, x.ToArray<double>());
    }

    [Fact]
    public void DeepChainDoesNotOverflowTheStack()
    {
        var x = Tensor.FromArray(new double[] { 1 }).RequiresGrad_();
        var y = x;
        for (int i = 0; i < 20000; i++) y = y * 1.0;
        y.Sum().Backward();
        Assert.Equal(1.0, x.Grad!.Item());
    }
}
