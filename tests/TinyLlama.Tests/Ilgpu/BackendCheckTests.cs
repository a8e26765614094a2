// The backend check (Backends/BackendCheck.cs, `tinyllama check`): every op case passes on ILGPU's CPU
// accelerator, in its fast 4-lane shape and in its GPU shape (ilgpu-cpu:1, where the backend takes its GPU
// kernel versions); these are the cases a GPU build runs with `tinyllama check --device cuda`. The comparison fails
// on a wrong value, a wrong integer, a wrong shape and an exception, and the CLI verb reports, filters and
// refuses a device that is not there.
using TinyLlama.Backends;
using TinyLlama.Tensors;
using TinyLlama.Tests.Cli;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")]
public class BackendCheckTests
{
    public static TheoryData<string> CaseNames()
    {
        var data = new TheoryData<string>();
        foreach (var c in BackendCheck.OpCases()) data.Add(c.Name);
        return data;
    }

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void OpCasePassesOnTheCpuAccelerator(string name)
    {
        var c = BackendCheck.OpCases().Single(x => x.Name == name);
        var r = BackendCheck.Run(c, IlgpuTestUtil.Dev);
        Assert.True(r.Passed, $"{name}: {r.Error ?? $"worst error / allowance {r.WorstRatio}"}");
    }

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void OpCasePassesOnTheGpuShapedCpuAccelerator(string name)
    {
        // ilgpu-cpu:1 has 32-lane warps and 256-thread groups, so the backend dispatches its GPU versions
        // (tiled GEMM, FlashAttention, tiled fused LoRA, int4 mat-vec and tiled): the backend-level check
        // of those paths that otherwise only a GPU gives.
        var c = BackendCheck.OpCases().Single(x => x.Name == name);
        var r = BackendCheck.Run(c, GpuShaped);
        Assert.True(r.Passed, $"{name}: {r.Error ?? $"worst error / allowance {r.WorstRatio}"}");
    }

    private static Device GpuShaped => TinyLlama.Backends.Ilgpu.IlgpuDevices.Resolve("ilgpu-cpu:1");

    [Fact]
    public void GpuShapedDeviceTakesTheTiledPaths()
    {
        var backend = (TinyLlama.Backends.Ilgpu.IlgpuBackend)GpuShaped.Backend;
        Assert.True(backend.Accelerator.WarpSize == 32 && backend.Accelerator.MaxNumThreadsPerGroup >= 256,
            $"ilgpu-cpu:1 has warp {backend.Accelerator.WarpSize} and {backend.Accelerator.MaxNumThreadsPerGroup} threads per group");
        Assert.Equal("ilgpu-cpu:1", GpuShaped.ToString());
    }

    [Fact]
    public void ComparisonFailsOnWrongValuesIntegersShapesAndExceptions()
    {
        // 1 + 3e-5 against 1 with rms 1: error 3e-5 > 1e-5 (1 + 1).
        var off = new BackendCheck.Case("off by 3e-5", dev => [Tensor.Full([4], dev == Device.Cpu ? 1.0 : 1.00003, DType.F32, dev)]);
        var r = BackendCheck.Run(off, IlgpuTestUtil.Dev);
        Assert.False(r.Passed);
        Assert.InRange(r.WorstRatio, 1.2, 1.8);
        var within = new BackendCheck.Case("off by 1e-5", dev => [Tensor.Full([4], dev == Device.Cpu ? 1.0 : 1.00001, DType.F32, dev)]);
        Assert.True(BackendCheck.Run(within, IlgpuTestUtil.Dev).Passed);
        var ids = new BackendCheck.Case("ids", dev => [Tensor.FromArray(dev == Device.Cpu ? new[] { 1, 2 } : new[] { 1, 3 }, [2], dev)]);
        Assert.False(BackendCheck.Run(ids, IlgpuTestUtil.Dev).Passed);
        var shape = new BackendCheck.Case("shape", dev => [Tensor.Zeros(dev == Device.Cpu ? [2, 3] : [3, 2], DType.F32, dev)]);
        var s = BackendCheck.Run(shape, IlgpuTestUtil.Dev);
        Assert.False(s.Passed);
        Assert.Contains("expected float32 [2, 3]", s.Error);
        var throws = new BackendCheck.Case("throws", dev => dev == Device.Cpu ? [Tensor.Zeros([1])] : throw new NotSupportedException("no kernel"));
        var t = BackendCheck.Run(throws, IlgpuTestUtil.Dev);
        Assert.False(t.Passed);
        Assert.Equal("no kernel", t.Error);
    }

    [Fact]
    public void CliChecksTheModelEndToEndAndFilters()
    {
        var (code, output, err) = CliRunner.Run("check", "--device", "ilgpu-cpu", "--filter", "llama");
        Assert.True(code == 0, err + output);
        Assert.Contains("ok   llama: 3 training steps", output);
        Assert.Contains("ok   llama: greedy generation ids", output);
        Assert.Contains("# 2 of 2 cases passed on ilgpu-cpu", output);
        (code, _, err) = CliRunner.Run("check", "--device", "ilgpu-cpu", "--filter", "no such op");
        Assert.Equal(2, code);
        Assert.Contains("no case name contains 'no such op'", err);
    }

    [SkippableFact]
    public void CliRefusesACudaCheckWithoutAGpu()
    {
        bool cuda;
        try { TinyLlama.Backends.Ilgpu.IlgpuDevices.Resolve("cuda"); cuda = true; }
        catch (InvalidOperationException) { cuda = false; }
        Skip.If(cuda, "this machine has a CUDA device");
        var (code, _, err) = CliRunner.Run("check", "--device", "cuda", "--filter", "fill");
        Assert.Contains("--device cuda: no CUDA device", CliRunner.AssertOneLineError(1, code, err)); // no fallback warning first
    }
}
