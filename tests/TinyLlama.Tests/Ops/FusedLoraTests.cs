// The fused LoRA linear (Ops/Functional.Lora.cs): forward against the naive definition
// (Ops/Reference/LoraRef.cs) at sizes that are not multiples of anything, f32 and f64, on the CPU and on
// ILGPU's CPU accelerator; gradients of x, the adapter input, W, A and B against central finite
// differences in f64 with a random upstream gradient, including the case where the adapter input is x
// itself (both paths' gradients must add up); the layer's form with a dropout keep-mask (one product for
// dx = dy W + mask * (g A)) against finite differences, against the general form fed x * mask, and on ILGPU
// against the CPU; and a LoRA Linear (which runs the fused op) against the composition x W^T + s (x A^T) B^T
// written out with plain matmuls, with and without adapter dropout.
using TinyLlama.NN;
using TinyLlama.Ops.Reference;
using TinyLlama.Tensors;
using TinyLlama.Tests.Ilgpu;
using static TinyLlama.Tests.Infrastructure.GradCheck;

namespace TinyLlama.Tests.Ops;

public class FusedLoraTests
{
    // N = 2 x 3 rows through batch dims, in = 13, out = 11, r = 3, s = 1.7.
    private const int In = 13, Out = 11, R = 3;
    private const double Scale = 1.7;

    private static double[] Reference(Tensor x, Tensor xd, Tensor w, Tensor a, Tensor b)
    {
        int n = x.Numel / In;
        var y = new double[n * Out];
        LoraRef.Forward(x.ToArray<double>(), xd.ToArray<double>(), w.ToArray<double>(), a.ToArray<double>(), b.ToArray<double>(), Scale, n, In, Out, R, y);
        return y;
    }

    [Theory]
    [InlineData(DType.F32, "cpu")]
    [InlineData(DType.F64, "cpu")]
    [InlineData(DType.F32, "ilgpu-cpu")]
    [InlineData(DType.F64, "ilgpu-cpu")]
    public void ForwardMatchesReference(DType dtype, string device)
    {
        var dev = device == "cpu" ? Device.Cpu : IlgpuTestUtil.Dev;
        var x = Tensor.RandN([2, 3, In], new Generator(1), dtype);
        var xd = Tensor.RandN([2, 3, In], new Generator(2), dtype);
        var w = Tensor.RandN([Out, In], new Generator(3), dtype);
        var a = Tensor.RandN([R, In], new Generator(4), dtype);
        var b = Tensor.RandN([Out, R], new Generator(5), dtype);
        var y = Functional.LoraLinear(x.To(dev), xd.To(dev), w.To(dev), a.To(dev), b.To(dev), Scale);
        Assert.Equal([2, 3, Out], y.Shape);
        // f64: sums of ~40 products of unit normals: 1e-12. f32: the same sums in f32 (|y| ~ 10): 1e-5 relative.
        double atol = dtype == DType.F64 ? 1e-12 : 1e-5, rtol = dtype == DType.F64 ? 1e-12 : 1e-5;
        FusedAssert.Close(Reference(x, xd, w, a, b), y.To(Device.Cpu).ToArray<double>(), atol, rtol, $"y ({dtype.Name()} on {device})");
    }

    [Fact]
    public void GradientsMatchFiniteDifferences()
    {
        Check(t => Functional.LoraLinear(t[0], t[1], t[2], t[3], t[4], Scale),
            [RandN(1, 2, 3, In), RandN(2, 2, 3, In), RandN(3, Out, In), RandN(4, R, In), RandN(5, Out, R)]);
    }

    [Fact]
    public void AdapterInputEqualToXGetsBothGradients()
    {
        // Without dropout the adapter reads x itself: dx = dy W + s (dy B) A.
        Check(t => Functional.LoraLinear(t[0], t[0], t[1], t[2], t[3], Scale),
            [RandN(6, 4, In), RandN(7, Out, In), RandN(8, R, In), RandN(9, Out, R)]);
    }

    [Fact]
    public void GradientsOnTheIlgpuBackendMatchTheCpu()
    {
        var inputs = new[] { RandN(1, 5, In), RandN(3, Out, In), RandN(4, R, In), RandN(5, Out, R) };
        var dy = RandN(6, 5, Out);
        Tensor[] Grads(Device dev)
        {
            var leaves = inputs.Select(t => (dev == Device.Cpu ? t.Detach().Clone() : t.Detach().To(dev)).RequiresGrad_()).ToArray();
            Functional.LoraLinear(leaves[0], leaves[0], leaves[1], leaves[2], leaves[3], Scale).Backward(dy.To(dev));
            return leaves.Select(l => l.Grad!.To(Device.Cpu)).ToArray();
        }
        var cpu = Grads(Device.Cpu);
        var dev = Grads(IlgpuTestUtil.Dev);
        for (int i = 0; i < cpu.Length; i++)
            FusedAssert.Close(cpu[i].ToArray<double>(), dev[i].ToArray<double>(), 1e-12, 1e-12, $"gradient of input {i}");
    }

    [Fact]
    public void LoraLinearLayerEqualsTheComposition()
    {
        var lin = LoraLinear.Wrap(new Linear(In, Out, bias: true, new Generator(10), DType.F64), R, alpha: R * Scale, dropout: 0, new Generator(11));
        using (TinyLlama.Autograd.GradMode.NoGrad())
            lin.LoraB.Weight.CopyFrom_(RandN(12, Out, R)); // B starts at zero; make the adapter matter
        var x = RandN(13, 2, 5, In).RequiresGrad_();
        var y = lin.Forward(x);
        var x2 = x.Detach().Clone().RequiresGrad_();
        var a = lin.LoraA.Weight.Detach().Clone().RequiresGrad_();
        var b = lin.LoraB.Weight.Detach().Clone().RequiresGrad_();
        var expected = Tensor.MatMul(x2, lin.Weight.Detach().MT) + lin.Bias!.Detach() + Tensor.MatMul(Tensor.MatMul(x2, a.MT) * Scale, b.MT);
        AssertLayerMatchesComposition(lin, x, y, x2, a, b, expected, RandN(14, 2, 5, Out));
        Assert.Null(lin.Weight.Grad); // W is frozen
    }

    /// <summary>
    /// The layer's y equals the composition's, and after backpropagating dy through both, so do the gradients of
    /// x, A and B (the composition's leaves x2, a, b are copies of the layer's x, A, B).
    /// </summary>
    private static void AssertLayerMatchesComposition(LoraLinear lin, Tensor x, Tensor y, Tensor x2, Tensor a, Tensor b, Tensor expected, Tensor dy)
    {
        FusedAssert.Close(expected.ToArray<double>(), y.ToArray<double>(), 1e-12, 1e-12, "y");
        y.Backward(dy);
        expected.Backward(dy);
        FusedAssert.Close(x2.Grad!.ToArray<double>(), x.Grad!.ToArray<double>(), 1e-12, 1e-12, "dx");
        FusedAssert.Close(a.Grad!.ToArray<double>(), lin.LoraA.Weight.Grad!.ToArray<double>(), 1e-12, 1e-12, "dA");
        FusedAssert.Close(b.Grad!.ToArray<double>(), lin.LoraB.Weight.Grad!.ToArray<double>(), 1e-12, 1e-12, "dB");
    }

    /// <summary>A dropout keep-mask of p = 0.3 in f64: 0 or 1 / 0.7, as Functional.DropoutMask draws it.</summary>
    private static Tensor Mask(ulong seed, params int[] shape) => Functional.DropoutMask(shape, 0.3, new Generator(seed), DType.F64, Device.Cpu);

    [Fact]
    public void MaskedFormGradientsMatchFiniteDifferences()
    {
        var mask = Mask(20, 2, 3, In);
        Check(t => Functional.LoraLinear(t[0], t[1], t[2], t[3], Scale, mask),
            [RandN(21, 2, 3, In), RandN(22, Out, In), RandN(23, R, In), RandN(24, Out, R)]);
    }

    [Fact]
    public void MaskedFormEqualsTheGeneralFormFedXTimesMask()
    {
        var mask = Mask(25, 5, In);
        var inputs = new[] { RandN(26, 5, In), RandN(27, Out, In), RandN(28, R, In), RandN(29, Out, R) };
        var dy = RandN(30, 5, Out);
        var fused = inputs.Select(t => t.Detach().Clone().RequiresGrad_()).ToArray();
        var y = Functional.LoraLinear(fused[0], fused[1], fused[2], fused[3], Scale, mask);
        y.Backward(dy);
        var general = inputs.Select(t => t.Detach().Clone().RequiresGrad_()).ToArray();
        var expected = Functional.LoraLinear(general[0], general[0] * mask, general[1], general[2], general[3], Scale);
        expected.Backward(dy);
        FusedAssert.Close(expected.ToArray<double>(), y.ToArray<double>(), 1e-12, 1e-12, "y");
        for (int i = 0; i < inputs.Length; i++)
            FusedAssert.Close(general[i].Grad!.ToArray<double>(), fused[i].Grad!.ToArray<double>(), 1e-12, 1e-12, $"gradient of input {i}");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void MaskedFormOnTheIlgpuBackendMatchesTheCpu(DType dtype)
    {
        var mask = Mask(31, 6, In).To(dtype);
        var inputs = new[] { RandN(32, 6, In), RandN(33, Out, In), RandN(34, R, In), RandN(35, Out, R) }.Select(t => t.To(dtype)).ToArray();
        var dy = RandN(36, 6, Out).To(dtype);
        (Tensor Y, Tensor[] Grads) Run(Device dev)
        {
            var leaves = inputs.Select(t => (dev == Device.Cpu ? t.Detach().Clone() : t.Detach().To(dev)).RequiresGrad_()).ToArray();
            var y = Functional.LoraLinear(leaves[0], leaves[1], leaves[2], leaves[3], Scale, mask.To(dev));
            y.Backward(dy.To(dev));
            return (y.To(Device.Cpu), leaves.Select(l => l.Grad!.To(Device.Cpu)).ToArray());
        }
        var cpu = Run(Device.Cpu);
        var dev = Run(IlgpuTestUtil.Dev);
        // IlgpuTestUtil's tolerances: f64 1e-12, f32 1e-5 relative (+1e-6 absolute).
        double atol = dtype == DType.F64 ? 1e-12 : 1e-6, rtol = dtype == DType.F64 ? 1e-12 : 1e-5;
        FusedAssert.Close(cpu.Y.ToArray<double>(), dev.Y.ToArray<double>(), atol, rtol, "y");
        for (int i = 0; i < cpu.Grads.Length; i++)
            FusedAssert.Close(cpu.Grads[i].ToArray<double>(), dev.Grads[i].ToArray<double>(), atol, rtol, $"gradient of input {i}");
    }

    [Fact]
    public void LoraLinearLayerWithDropoutEqualsTheComposition()
    {
        // In training the layer draws the keep-mask from its generator as Functional.Dropout would; the same
        // generator state replayed through Dropout gives the composition's mask.
        var gen = new Generator(40);
        var lin = LoraLinear.Wrap(new Linear(In, Out, bias: false, new Generator(41), DType.F64), R, alpha: R * Scale, dropout: 0.25, gen);
        using (TinyLlama.Autograd.GradMode.NoGrad())
            lin.LoraB.Weight.CopyFrom_(RandN(42, Out, R));
        lin.Train(true);
        var state = gen.GetState();
        var x = RandN(43, 2, 5, In).RequiresGrad_();
        var y = lin.Forward(x);
        var replay = new Generator(0);
        replay.SetState(state);
        var x2 = x.Detach().Clone().RequiresGrad_();
        var a = lin.LoraA.Weight.Detach().Clone().RequiresGrad_();
        var b = lin.LoraB.Weight.Detach().Clone().RequiresGrad_();
        var xd = Functional.Dropout(x2, 0.25, true, replay);
        var expected = Tensor.MatMul(x2, lin.Weight.Detach().MT) + Tensor.MatMul(Tensor.MatMul(xd, a.MT) * Scale, b.MT);
        AssertLayerMatchesComposition(lin, x, y, x2, a, b, expected, RandN(44, 2, 5, Out));
        Assert.Equal(gen.GetState(), replay.GetState());   // both drew exactly one mask
    }
}
