// The whole model on ILGPU's CPU accelerator against the CPU backend: a training step (forward,
// backward, AdamW) gives the same losses within 1e-4, greedy generation gives identical ids, and
// `tinyllama perplexity --device ilgpu-cpu` equals `--device cpu` within 1e-4 on tiny-random-llama.
using System.Text.Json;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Tensors;
using TinyLlama.Tests.Cli;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Ilgpu;

public class IlgpuEndToEndTests
{
    private static readonly Device Emulator = IlgpuDevices.Resolve("ilgpu-cpu");

    // The training and generation checks are `tinyllama check`'s model cases (Cli/Commands/CheckCommand.cs),
    // so the test suite and a GPU build run the same code: three steps of forward, cross-entropy, backward,
    // clipping and AdamW with losses within 1e-4, and greedy ids identical.
    [Theory]
    [InlineData("llama: 3 training steps (forward, backward, clip, AdamW) losses")]
    [InlineData("llama: greedy generation ids (12 tokens)")]
    public void ModelMatchesTheCpuBackend(string name)
    {
        var c = TinyLlama.Cli.Commands.CheckCommand.ModelCases().Single(x => x.Name == name);
        var r = TinyLlama.Backends.BackendCheck.Run(c, Emulator);
        Assert.True(r.Passed, $"{name}: {r.Error ?? $"worst error / allowance {r.WorstRatio}"}");
    }

    [Fact]
    public void TrainingStepsLowerTheLoss()
    {
        // The check above compares two backends; this makes sure what they compare is a working step.
        var losses = TinyLlama.Cli.Commands.CheckCommand.ModelCases().First().Body(Device.Cpu)[0].ToArray<float>();
        Assert.True(losses[2] < losses[0], $"losses {string.Join(", ", losses)} should fall over three steps");
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

    [Fact]
    public void BenchTrainReportsOneHostReadPerStep()
    {
        // The step's one read is its loss, taken after AdamW: nothing inside forward, backward or the update
        // waits for the device (the same measure `benchmarks/gpu/run.sh` takes on CUDA for the 110M config).
        var (code, output, err) = CliRunner.Run("bench", "train", "--preset", "stories260K", "--batch-size", "1", "--seq-len", "8",
                                                "--steps", "1", "--warmup", "0", "--json", "--device", "ilgpu-cpu");
        Assert.True(code == 0, err);
        var json = JsonDocument.Parse(output).RootElement;
        Assert.Equal(1, json.GetProperty("host_reads_per_step").GetInt32());
        Assert.True(json.GetProperty("tokens_per_second").GetDouble() > 0);
        (code, output, err) = CliRunner.Run("bench", "train", "--preset", "stories260K", "--batch-size", "1", "--seq-len", "8",
                                            "--steps", "1", "--warmup", "0", "--json", "--lora-rank", "4", "--device", "ilgpu-cpu");
        Assert.True(code == 0, err);
        Assert.Equal(1, JsonDocument.Parse(output).RootElement.GetProperty("host_reads_per_step").GetInt32());
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
