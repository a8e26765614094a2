// The fused AdamW step: on the CPU against the unfused optimizer (Optim/AdamW.cs), and on the ILGPU
// backend (CPU accelerator) against the CPU, over several steps.
using TinyLlama.Autograd;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Ilgpu.IlgpuTestUtil;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")]
public class IlgpuOptimTests
{
    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void CpuAdamWStepMatchesTheUnfusedOptimizer(DType dtype)
    {
        // 37 elements: SIMD blocks plus a scalar tail. The fused step orders its operations as AdamW.cs does.
        var p = RandN(60, dtype, 37);
        var fusedP = p.Clone();
        var m = Tensor.Zeros([37], dtype);
        var v = Tensor.Zeros([37], dtype);
        var opt = new AdamW([p.RequiresGrad_()], lr: 0.01, weightDecay: 0.1);
        for (int step = 1; step <= 3; step++)
        {
            var g = RandN(60 + (ulong)step, dtype, 37);
            p.Grad = g;
            opt.Step();
            Cpu.AdamWStep(fusedP, g, m, v, 0.01, 0.9, 0.999, 1e-8, 0.1, step);
            AssertClose(p.Detach(), fusedP, $"step {step} {dtype.Name()}");
        }
    }

    [Theory]
    [MemberData(nameof(ComputeTypes), MemberType = typeof(IlgpuTestUtil))]
    public void IlgpuAdamWStepMatchesCpu(DType dtype)
    {
        var (p, pDev) = Both(RandN(70, dtype, 5, 9));
        var (m, mDev) = Zeros(dtype, 5, 9);
        var (v, vDev) = Zeros(dtype, 5, 9);
        for (int step = 1; step <= 3; step++)
        {
            var (g, gDev) = Both(RandN(70 + (ulong)step, dtype, 5, 9));
            Cpu.AdamWStep(p, g, m, v, 0.003, 0.9, 0.95, 1e-8, 0.1, step);
            Backend.AdamWStep(pDev, gDev, mDev, vDev, 0.003, 0.9, 0.95, 1e-8, 0.1, step);
        }
        AssertClose(p, pDev, $"params {dtype.Name()}");
        AssertClose(m, mDev, $"m {dtype.Name()}");
        AssertClose(v, vDev, $"v {dtype.Name()}");
        Assert.Throws<ArgumentException>(() => Backend.AdamWStep(pDev, Tensor.Zeros([5, 8], dtype, Dev), mDev, vDev, 0.1, 0.9, 0.95, 1e-8, 0, 1));
        Assert.Throws<ArgumentException>(() => Backend.AdamWStep(pDev, pDev, mDev, vDev, 0.1, 0.9, 0.95, 1e-8, 0, 0));
    }
}
