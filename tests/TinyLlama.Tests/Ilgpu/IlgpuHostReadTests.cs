// A training step on an ILGPU device reads nothing back to the host until it is over (issue: "a training
// step with no host round-trips inside the step"). IlgpuBackend.HostReads counts every point where the
// host waits for the device (downloads and synchronisations); uploads of the batch do not wait. Also: the
// on-device gradient clipping equals the host version, including the no-clip and non-finite cases.
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Training.Trainer;
using TinyLlama.Tests.Training;
using static TinyLlama.Tests.Ilgpu.IlgpuTestUtil;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")] // HostReads counts the calling thread's reads, so other tests on the device do not disturb it
public class IlgpuHostReadTests
{
    private static LlamaConfig Small() => Tests.Model.LlamaTests.Tiny(vocab: 29, hidden: 16, layers: 2, heads: 4, kvHeads: 2, ffn: 20, maxPos: 32);

    [Fact]
    public void ForwardBackwardClipAndAdamWReadNothingBack()
    {
        var ids = Tensor.FromArray(new[] { 1, 4, 7, 2, 9, 3, 8, 5, 11, 2, 6, 1 }, [2, 6]);
        var targets = Tensor.FromArray(new[] { 4, 7, 2, 9, 3, -100, 5, 11, 2, 6, 1, 4 }, [2, 6]);
        (double Loss, double Norm, long Reads) Step(Device device)
        {
            var model = new LlamaForCausalLM(Small(), new Generator(7), DType.F32, device);
            var opt = new AdamW(model.Parameters(), 1e-2, weightDecay: 0.01);
            opt.ZeroGrad();
            long before = Backend.HostReads;
            var loss = Functional.CrossEntropy(model.Forward(ids), targets);
            loss.Backward();
            var norm = GradClip.ClipGradNormOnDevice(model.Parameters(), 0.5); // the norm of random init is > 0.5: clipping applies
            opt.Step();
            long reads = Backend.HostReads - before;
            return (loss.Item(), norm.Item(), reads);
        }
        var gpu = Step(Dev);
        Assert.Equal(0, gpu.Reads);
        var cpu = Step(Device.Cpu);
        Assert.True(Math.Abs(cpu.Loss - gpu.Loss) <= 1e-5 * cpu.Loss, $"loss cpu {cpu.Loss} vs ilgpu-cpu {gpu.Loss}");
        Assert.True(Math.Abs(cpu.Norm - gpu.Norm) <= 1e-5 * cpu.Norm, $"norm cpu {cpu.Norm} vs ilgpu-cpu {gpu.Norm}");
        Assert.True(cpu.Norm > 0.5, $"norm {cpu.Norm}: the test needs clipping to apply");
    }

    [Fact]
    public void TrainerStepReadsOnlyTheLossAndTheNormAtTheEnd()
    {
        var examples = SftTrainerTests.SyntheticExamples(6, 37, 3);
        var model = new LlamaForCausalLM(Tests.Model.LlamaTests.Tiny(), new Generator(11), DType.F32, Dev);
        var loader = new TinyLlama.Training.Data.SftDataLoader(examples, 3, shuffle: false, seed: 5, padId: 0, maxLength: 32);
        var trainer = new SftTrainer(model, loader, new SftOptions { Steps = 2, Lr = 1e-2, GradClip = 1.0, GradAccum = 2 });
        long before = Backend.HostReads;
        var log = trainer.TrainStep();
        Assert.Equal(2, Backend.HostReads - before); // the summed loss of both micro-batches, then the gradient norm
        Assert.True(double.IsFinite(log.Loss) && double.IsFinite(log.GradNorm), $"loss {log.Loss}, norm {log.GradNorm}");
    }

    [Theory]
    [InlineData(0.05)]  // clips
    [InlineData(100.0)] // leaves the gradients alone
    public void ClipOnDeviceEqualsTheHostVersion(double maxNorm)
    {
        var grads = new[] { RandN(1, DType.F32, 5, 7), RandN(2, DType.F32, 11) };
        Tensor[] Params(Device device) => grads.Select(g => { var p = Tensor.Zeros(g.Shape, DType.F32, device); p.Grad = g.To(device); return p; }).ToArray();
        var host = Params(Device.Cpu);
        var dev = Params(Dev);
        double hostNorm = GradClip.ClipGradNorm(host, maxNorm);
        double devNorm = GradClip.ClipGradNormOnDevice(dev, maxNorm).Item();
        Assert.True(Math.Abs(hostNorm - devNorm) <= 1e-6 * hostNorm, $"{hostNorm} vs {devNorm}");
        for (int i = 0; i < grads.Length; i++)
            AssertClose(host[i].Grad!, dev[i].Grad!, $"gradient {i}");
    }

    [Fact]
    public void NonFiniteNormLeavesGradientsUnscaled()
    {
        var g = Tensor.FromDoubles([1, double.PositiveInfinity, 3], [3]);
        var p = Tensor.Zeros([3], DType.F32, Dev);
        p.Grad = g.To(Dev);
        double norm = GradClip.ClipGradNormOnDevice([p], 1.0).Item();
        Assert.True(double.IsPositiveInfinity(norm));
        Assert.Equal([1f, float.PositiveInfinity, 3f], p.Grad.ToArray<float>());
    }
}
