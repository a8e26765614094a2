// End to end through the public Tensor API: tensors moved with To(device) dispatch every op to the
// ILGPU backend through their storage, including autograd's backward. A small LLaMA-style block
// (embedding -> RMSNorm -> attention -> SwiGLU MLP -> logits -> cross-entropy) must give the CPU's loss and
// gradients for every parameter; and device gradients of the fused ops match central finite differences.
using TinyLlama.Tensors;
using TinyLlama.Tests.Infrastructure;
using static TinyLlama.Tests.Ilgpu.IlgpuTestUtil;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")]
public class IlgpuTensorApiTests
{
    private const int V = 13, C = 8, T = 5, B = 2, H = 2, D = 4, F = 12;

    private static Tensor[] MakeParameters(DType dtype, Device device)
    {
        var shapes = new[] { new[] { V, C }, [C], [C, 3 * C], [C, C], [C, F], [C, F], [F, C], [C, V] };
        return shapes.Select((s, i) =>
        {
            var cpu = RandN(80 + (ulong)i, dtype, s) * (i == 1 ? 1.0 : 0.4);
            return cpu.To(device).Detach().RequiresGrad_();
        }).ToArray();
    }

    private static Tensor Loss(Tensor[] p, Tensor ids, Tensor targets)
    {
        var (emb, norm, qkv, wo, wGate, wUp, wDown, head) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]);
        var x = Functional.Embedding(ids, emb);                                   // [B, T, C]
        var h = Functional.RmsNorm(x, norm);
        var parts = h.MatMul(qkv).Chunk(3, -1);                                   // 3 x [B, T, C] (strided views)
        Tensor Heads(Tensor t) => t.Reshape(B, T, H, D).Permute(0, 2, 1, 3);      // [B, H, T, D]
        var a = Functional.ScaledDotProductAttention(Heads(parts[0]), Heads(parts[1]), Heads(parts[2]), causal: true);
        x = x + a.Permute(0, 2, 1, 3).Reshape(B, T, C).MatMul(wo);
        x = x + Functional.SwiGlu(x.MatMul(wGate), x.MatMul(wUp)).MatMul(wDown);
        var logits = x.MatMul(head).Gelu().Softmax(-1).Log() + x.Sum(-1, keepDim: true).Tanh();
        return Functional.CrossEntropy(logits, targets);
    }

    [Fact]
    public void DeviceGradientsMatchFiniteDifferences()
    {
        // f moves its f64 inputs to the device (To records the copy, so gradients flow back to the CPU
        // leaves), computes there, and brings the result back; GradCheck compares Backward with central
        // differences under a random upstream gradient.
        Tensor OnDevice(Tensor t) => t.To(Dev);
        GradCheck.Check(xs =>
        {
            var x = OnDevice(xs[0]);
            var h = Functional.RmsNorm(x, OnDevice(xs[1])).Softmax(-1).MatMul(OnDevice(xs[2]).MT).Gelu();
            return Functional.SwiGlu(h, h.Permute(1, 0, 2).Contiguous().Permute(1, 0, 2) * 0.5).Sum(1).To(Device.Cpu);
        }, [GradCheck.RandN(100, 2, 3, 4), GradCheck.RandN(101, 4), GradCheck.RandN(102, 5, 4)]);
        GradCheck.Check(xs =>
        {
            var (cos, sin) = Functional.RopeTables(Functional.RopeInverseFrequencies(2), 1, 3, DType.F64, Dev);
            var q = Functional.Rope(OnDevice(xs[0]), cos, sin).Permute(0, 2, 1, 3);   // [1, 2, 3, 2]
            var o = Functional.ScaledDotProductAttention(q, OnDevice(xs[1]), OnDevice(xs[2]), causal: true);
            return Functional.CrossEntropy(o.Reshape(6, 2) * 3.0, Tensor.FromArray(new[] { 0, 1, 1, -100, 0, 1 }, Dev)).To(Device.Cpu);
        }, [GradCheck.RandN(103, 1, 3, 2, 2), GradCheck.RandN(104, 1, 1, 3, 2), GradCheck.RandN(105, 1, 1, 3, 2)]);
    }

    [Theory]
    [InlineData(DType.F64, 1e-10)]
    // f32: errors of ~1e-7 per op compound through ~30 ops and their backward.
    [InlineData(DType.F32, 1e-4)]
    public void SmallTransformerBlockLossAndGradientsMatchCpu(DType dtype, double rtol)
    {
        var ids = Tensor.FromArray(new[] { 1, 5, 12, 0, 5, 7, 7, 3, 11, 2 }, [B, T]);
        var targets = Tensor.FromArray(new[] { 5, 12, 0, -100, 7, 7, 3, 11, 2, 4 }, [B, T]);
        var cpu = MakeParameters(dtype, Device.Cpu);
        var dev = MakeParameters(dtype, Dev);
        Assert.All(dev, t => Assert.Equal(Dev, t.Device));

        var lossCpu = Loss(cpu, ids, targets);
        var lossDev = Loss(dev, ids.To(Dev), targets.To(Dev));
        Assert.Equal(Dev, lossDev.Device);
        lossCpu.Backward();
        lossDev.Backward();

        AssertClose(lossCpu, lossDev, rtol, rtol, "loss");
        for (int i = 0; i < cpu.Length; i++)
        {
            Assert.NotNull(dev[i].Grad);
            Assert.Equal(Dev, dev[i].Grad!.Device);
            AssertClose(cpu[i].Grad!, dev[i].Grad!, rtol, rtol * 1e-2, $"gradient of parameter {i}");
        }
    }
}
