// The fused LoRA linear (Ops/Functional.Lora.cs): forward against the naive definition
// (Ops/Reference/LoraRef.cs) at sizes that are not multiples of anything, f32 and f64, on the CPU and on
// ILGPU's CPU accelerator; gradients of x, the adapter input, W, A and B against central finite
// differences in f64 with a random upstream gradient, including the case where the adapter input is x
// itself (both paths' gradients must add up); and a LoRA Linear (which now runs the fused op) against
// the composition x W^T + s (x A^T) B^T written out with plain matmuls.
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
        var lin = new Linear(In, Out, bias: true, new Generator(10), DType.F64);
        lin.EnableLora(R, alpha: R * Scale, dropout: 0, new Generator(11));
        using (TinyLlama.Autograd.GradMode.NoGrad())
            lin.LoraB!.Weight.CopyFrom_(RandN(12, Out, R)); // B starts at zero; make the adapter matter
        var x = RandN(13, 2, 5, In).RequiresGrad_();
        var y = lin.Forward(x);
        var x2 = x.Detach().Clone().RequiresGrad_();
        var a = lin.LoraA!.Weight.Detach().Clone().RequiresGrad_();
        var b = lin.LoraB.Weight.Detach().Clone().RequiresGrad_();
        var expected = Tensor.MatMul(x2, lin.Weight.Detach().MT) + lin.Bias!.Detach() + Tensor.MatMul(Tensor.MatMul(x2, a.MT) * Scale, b.MT);
        FusedAssert.Close(expected.ToArray<double>(), y.ToArray<double>(), 1e-12, 1e-12, "y");
        var dy = RandN(14, 2, 5, Out);
        y.Backward(dy);
        expected.Backward(dy);
        FusedAssert.Close(x2.Grad!.ToArray<double>(), x.Grad!.ToArray<double>(), 1e-12, 1e-12, "dx");
        FusedAssert.Close(a.Grad!.ToArray<double>(), lin.LoraA.Weight.Grad!.ToArray<double>(), 1e-12, 1e-12, "dA");
        FusedAssert.Close(b.Grad!.ToArray<double>(), lin.LoraB.Weight.Grad!.ToArray<double>(), 1e-12, 1e-12, "dB");
        Assert.Null(lin.Weight.Grad); // W is frozen
    }
}
