// RMSNorm: the fast CPU path against the naive reference (Ops/Reference/RmsNormRef.cs) at odd sizes in
// f32 and f64, the autograd op against a composition of primitive ops, gradients against central finite
// differences in f64 (contiguous and permuted inputs), and a deterministic weight gradient.
using TinyLlama.Ops.Reference;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Infrastructure.GradCheck;

namespace TinyLlama.Tests.Ops;

public class FusedRmsNormTests
{
    public static TheoryData<int, int, DType> Sizes()
    {
        var data = new TheoryData<int, int, DType>();
        foreach (var dtype in new[] { DType.F32, DType.F64 })
        {
            // C = 1 (degenerate row), 7 and 67 (SIMD tails), 768 (LLaMA-ish); N = 300 splits dWeight into chunks.
            data.Add(1, 1, dtype);
            data.Add(5, 7, dtype);
            data.Add(3, 67, dtype);
            data.Add(300, 200, dtype);   // 3 dWeight chunks
            data.Add(1000, 67, dtype);   // 4 dWeight chunks
            data.Add(33, 768, dtype);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public void FastPathMatchesReference(int n, int c, DType dtype)
    {
        const double eps = 1e-5;
        var x = Tensor.RandN([n, c], new Generator(1), dtype);
        var w = Tensor.RandN([c], new Generator(2), dtype, mean: 1, std: 0.5);
        var dy = Tensor.RandN([n, c], new Generator(3), dtype);
        var y = Tensor.Zeros([n, c], dtype);
        var rstd = Tensor.Zeros([n], dtype);
        var dx = Tensor.Zeros([n, c], dtype);
        var dw = Tensor.Full([c], 123.0, dtype);   // must be overwritten, not accumulated into
        x.Backend.RmsNorm(x, w, eps, y, rstd);
        x.Backend.RmsNormBackward(dy, x, w, rstd, dx, dw);

        double[] xd = x.ToArray<double>(), wd = w.ToArray<double>(), dyd = dy.ToArray<double>();
        var yRef = new double[n * c];
        var rRef = new double[n];
        var dxRef = new double[n * c];
        var dwRef = new double[c];
        RmsNormRef.Forward(xd, wd, n, c, eps, yRef, rRef);
        RmsNormRef.Backward(dyd, xd, wd, n, c, eps, dxRef, dwRef);

        // f64: only rounding-order differences (SIMD sums vs sequential), far below 1e-12.
        // f32: each output is a few products of O(1) values and one sum of C squares computed in f32
        // (relative error about sqrt(C) * 6e-8); dWeight sums N such terms. 2e-5 relative to the size of
        // the terms leaves room for that while a wrong formula misses by O(1).
        double tol = dtype == DType.F64 ? 1e-12 : 2e-5;
        FusedAssert.Close(yRef, y.ToArray<double>(), tol, tol, "y");
        FusedAssert.Close(rRef, rstd.ToArray<double>(), tol, tol, "rstd");
        FusedAssert.Close(dxRef, dx.ToArray<double>(), tol, tol, "dx");
        FusedAssert.Close(dwRef, dw.ToArray<double>(), tol * Math.Sqrt(n), tol, "dWeight");
    }

    [Fact]
    public void MatchesCompositionOfPrimitiveOps()
    {
        // x [2, 3, 67] (leading dims are flattened into rows); forward and both gradients.
        const double eps = 1e-6;
        var x = RandN(1, 2, 3, 67).RequiresGrad_();
        var w = (RandN(2, 67) * 0.3 + 1.0).Detach().RequiresGrad_();
        var x2 = x.Detach().Clone().RequiresGrad_();
        var w2 = w.Detach().Clone().RequiresGrad_();
        var y = Functional.RmsNorm(x, w, eps);
        var yc = x2 * (x2.Square().Mean(-1, keepDim: true) + eps).Rsqrt() * w2;
        // Both in f64 from the same inputs: differences are rounding only.
        FusedAssert.Close(yc, y, 1e-13, 1e-12, "y");
        var u = RandN(3, 2, 3, 67);
        y.Backward(u);
        yc.Backward(u);
        FusedAssert.Close(x2.Grad!, x.Grad!, 1e-12, 1e-10, "dx");
        FusedAssert.Close(w2.Grad!, w.Grad!, 1e-12, 1e-10, "dWeight");
    }

    [Fact]
    public void GradientsMatchFiniteDifferences()
    {
        // Default GradCheck tolerances (atol 1e-6, rtol 1e-5): central differences with h = 1e-6 in f64
        // have truncation error O(h^2 f''') ~ 1e-12 and rounding error ~ 1e-16 / 1e-6 = 1e-10.
        Check(t => Functional.RmsNorm(t[0], t[1], 1e-5), [RandN(1, 4, 7), RandN(2, 7)]);
        // A permuted (non-contiguous) x: stored [7, 4], normalised as [4, 7] rows.
        Check(t => Functional.RmsNorm(t[0].Permute(1, 0), t[1], 1e-5), [RandN(3, 7, 4), RandN(4, 7)]);
        // C = 1: the normalised value is x / sqrt(x^2 + eps), whose gradient is eps-dominated.
        Check(t => Functional.RmsNorm(t[0], t[1], 0.1), [RandN(5, 3, 1), RandN(6, 1)]);
    }

    [Fact]
    public void WeightGradientIsBitwiseDeterministic()
    {
        // dWeight is a sum over 2000 rows, split into chunks that run on different threads; the
        // reduction order must not depend on scheduling.
        var x = Tensor.RandN([2000, 96], new Generator(1));
        var w = Tensor.RandN([96], new Generator(2));
        var dy = Tensor.RandN([2000, 96], new Generator(3));
        Tensor DWeight()
        {
            var y = Tensor.Zeros([2000, 96]);
            var rstd = Tensor.Zeros([2000]);
            var dx = Tensor.Zeros([2000, 96]);
            var dw = Tensor.Zeros([96]);
            x.Backend.RmsNorm(x, w, 1e-5, y, rstd);
            x.Backend.RmsNormBackward(dy, x, w, rstd, dx, dw);
            return dw;
        }
        var first = DWeight();
        for (int i = 0; i < 5; i++) FusedAssert.Identical(first, DWeight(), "dWeight");
    }

    [Fact]
    public void ShapeErrorsNameTheOpAndShapes()
    {
        var e = Assert.Throws<ArgumentException>(() => Functional.RmsNorm(Tensor.Zeros([2, 5]), Tensor.Zeros([4])));
        Assert.Contains("rms_norm", e.Message);
        Assert.Contains("[2, 5]", e.Message);
        Assert.Contains("[4]", e.Message);
    }
}
