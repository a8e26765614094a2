// The whole model on ILGPU's CPU accelerator against the CPU backend: a training step (forward,
// backward, AdamW) gives the same losses within 1e-4, greedy generation gives identical ids, and
// `tinyllama perplexity --device ilgpu-cpu` equals `--device cpu` within 1e-4 on tiny-random-llama.
using System.Text.Json;
using TinyLlama.Autograd;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Tests.Cli;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Ilgpu;

public class IlgpuEndToEndTests
{
    private static readonly Device Emulator = IlgpuDevices.Resolve("ilgpu-cpu");

    private static LlamaConfig Small() => Tests.Model.LlamaTests.Tiny(vocab: 29, hidden: 16, layers: 2, heads: 4, kvHeads: 2, ffn: 20, maxPos: 32);

    [Fact]
    public void TrainingStepsMatchTheCpuBackend()
    {
        var ids = Tensor.FromArray(new[] { 1, 4, 7, 2, 9, 3, 8, 5, 11, 2, 6, 1 }, [2, 6]);
        var targets = Tensor.FromArray(new[] { 4, 7, 2, 9, 3, -100, 5, 11, 2, 6, 1, 4 }, [2, 6]);
        double[] Losses(Device device)
        {
            var model = new LlamaForCausalLM(Small(), new Generator(7), DType.F32, device);
            var opt = new AdamW(model.Parameters(), 1e-2, weightDecay: 0.01);
            var losses = new double[3];
            for (int s = 0; s < 3; s++)
            {
                opt.ZeroGrad();
                var loss = Functional.CrossEntropy(model.Forward(ids), targets);
                loss.Backward();
                GradClip.ClipGradNorm(model.Parameters(), 1.0);
                opt.Step();
                losses[s] = loss.Item();
            }
            return losses;
        }
        var cpu = Losses(Device.Cpu);
        var gpu = Losses(Emulator);
        for (int s = 0; s < 3; s++)
            Assert.True(Math.Abs(cpu[s] - gpu[s]) <= 1e-4 * Math.Abs(cpu[s]), $"step {s + 1}: cpu {cpu[s]} vs ilgpu-cpu {gpu[s]}");
        Assert.True(cpu[2] < cpu[0], "the loss should fall over three steps");
    }

    [Fact]
    public void GreedyGenerationGivesIdenticalIds()
    {
        int[] Generate(Device device)
        {
            var model = new LlamaForCausalLM(Small(), new Generator(8), DType.F32, device);
            // Larger weights than the default init so the argmax is decisive, not a near-tie.
            using (GradMode.NoGrad())
                foreach (var p in model.Parameters()) p.CopyFrom_(Tensor.RandN(p.Shape, new Generator(9), DType.F32, null, 0, 0.3));
            return TextGenerator.Generate(model, [1, 5, 9], 12, SamplingOptions.Greedy).ToArray();
        }
        Assert.Equal(Generate(Device.Cpu), Generate(Emulator));
    }

    [SkippableFact]
    public void PerplexityCliOnTheEmulatorEqualsCpu()
    {
        var dir = SharedData.Require("tiny-random-llama");
        string text = "The llama ate 12 green apples.";
        var cpu = CliRunner.Run("perplexity", "--model", dir, "--text", text, "--json");
        var gpu = CliRunner.Run("perplexity", "--model", dir, "--text", text, "--json", "--device", "ilgpu-cpu");
        Assert.True(cpu.Code == 0, cpu.Err);
        Assert.True(gpu.Code == 0, gpu.Err);
        double a = JsonDocument.Parse(cpu.Out).RootElement.GetProperty("mean_nll").GetDouble();
        double b = JsonDocument.Parse(gpu.Out).RootElement.GetProperty("mean_nll").GetDouble();
        Assert.True(Math.Abs(a - b) <= 1e-4 * a, $"cpu {a} vs ilgpu-cpu {b}");
    }

    [SkippableFact]
    public void CudaWithoutAGpuFallsBackWithAClearWarning()
    {
        Skip.If(IlgpuDevicesHaveCuda(), "this machine has a CUDA device");
        var (code, output, err) = CliRunner.Run("bench", "gemm", "--sizes", "8", "--repeats", "1", "--json", "--device", "cuda");
        Assert.Equal(0, code);
        Assert.Contains("falling back to --device cpu", err);
        Assert.Contains("CUDA", err);
        Assert.Contains("\"gflops\"", output);
    }

    private static bool IlgpuDevicesHaveCuda()
    {
        try { IlgpuDevices.Resolve("cuda"); return true; }
        catch (InvalidOperationException) { return false; }
    }
}
