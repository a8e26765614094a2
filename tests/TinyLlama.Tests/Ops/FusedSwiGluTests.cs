// SwiGLU: the fast CPU path against the naive reference (Ops/Reference/SwiGluRef.cs) at every SIMD tail
// and across the 1024-element work blocks, f32 and f64; the autograd op against Silu() * up; gradients
// against central finite differences in f64 with non-contiguous inputs.
using TinyLlama.Ops.Reference;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Infrastructure.GradCheck;

namespace TinyLlama.Tests.Ops;

public class FusedSwiGluTests
{
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void FastPathMatchesReference(DType dtype)
    {
        foreach (int n in new[] { 1, 7, 8, 9, 67, 1023, 1024, 1025, 3000 })
        {
            // Gates up to |g| ~ 12 reach the flat parts of the sigmoid on both sides.
            var g = Tensor.RandN([n], new Generator(1), dtype, std: 4);
            var u = Tensor.RandN([n], new Generator(2), dtype);
            var dy = Tensor.RandN([n], new Generator(3), dtype);
            var y = Tensor.Zeros([n], dtype);
            var dg = Tensor.Full([n], 5.0, dtype);
            var du = Tensor.Full([n], 5.0, dtype);
            g.Backend.SwiGlu(g, u, y);
            g.Backend.SwiGluBackward(g, u, dy, dg, du);
            double[] gd = g.ToArray<double>(), ud = u.ToArray<double>(), dyd = dy.ToArray<double>();
            var yRef = new double[n];
            var dgRef = new double[n];
            var duRef = new double[n];
            SwiGluRef.Forward(gd, ud, yRef);
            SwiGluRef.Backward(gd, ud, dyd, dgRef, duRef);
            // f64: TensorPrimitives' sigmoid is within a few ulps of 1 / (1 + exp(-g)): 1e-14.
            // f32: a few ulps of the sigmoid and three products: 1e-6 relative, and 1e-7 absolute for
            // outputs that cancel to ~0.
            double atol = dtype == DType.F64 ? 1e-14 : 1e-6, rtol = dtype == DType.F64 ? 1e-13 : 1e-6;
            FusedAssert.Close(yRef, y.ToArray<double>(), atol, rtol, $"y (n = {n})");
            FusedAssert.Close(dgRef, dg.ToArray<double>(), atol, rtol, $"dGate (n = {n})");
            FusedAssert.Close(duRef, du.ToArray<double>(), atol, rtol, $"dUp (n = {n})");
        }
    }

    [Fact]
    public void MatchesSiluTimesUp()
    {
        var g = RandN(1, 3, 5, 11).RequiresGrad_();
        var u = RandN(2, 3, 5, 11).RequiresGrad_();
        var (g2, u2) = (g.Detach().Clone().RequiresGrad_(), u.Detach().Clone().RequiresGrad_());
        var y = Functional.SwiGlu(g, u);
        var yc = g2.Silu() * u2;
        // Same math in f64, different sigmoid implementations (SIMD vs scalar): 1e-14.
        FusedAssert.Close(yc, y, 1e-14, 1e-13, "y");
        var dy = RandN(3, 3, 5, 11);
        y.Backward(dy);
        yc.Backward(dy);
        FusedAssert.Close(g2.Grad!, g.Grad!, 1e-14, 1e-13, "dGate");
        FusedAssert.Close(u2.Grad!, u.Grad!, 1e-14, 1e-13, "dUp");
    }

    [Fact]
    public void GradientsMatchFiniteDifferences()
    {
        // Default GradCheck tolerances (atol 1e-6, rtol 1e-5), see GradCheck.cs.
        Check(t => Functional.SwiGlu(t[0], t[1]), [RandN(1, 4, 6), RandN(2, 4, 6)]);
        // Transposed gate and strided slice of up (non-contiguous both).
        Check(t => Functional.SwiGlu(t[0].Transpose(0, 1), t[1].Slice(1, 0, 8, 2)), [RandN(3, 4, 3), RandN(4, 3, 8)]);
    }

    [Fact]
    public void ShapeMismatchNamesTheOpAndShapes()
    {
        var e = Assert.Throws<ArgumentException>(() => Functional.SwiGlu(Tensor.Zeros([2, 8]), Tensor.Zeros([2, 7])));
        Assert.Contains("swiglu", e.Message);
        Assert.Contains("[2, 8]", e.Message);
        Assert.Contains("[2, 7]", e.Message);
    }
}
