// Device resolution: names map to devices, the CPU accelerator is always there, and asking for a GPU
// that this machine does not have fails with a one-line reason (the test holds on GPU machines too).
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Ilgpu.IlgpuTestUtil;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")]
public class IlgpuDeviceTests
{
    [Fact]
    public void ResolvesTheCpuAcceleratorAndTheCpu()
    {
        Assert.Equal(new Device(DeviceKind.IlgpuCpu), IlgpuDevices.Resolve("ilgpu-cpu"));
        Assert.Equal(Device.Cpu, IlgpuDevices.Resolve("cpu"));
        Assert.IsType<IlgpuBackend>(Dev.Backend);
        Assert.Throws<ArgumentException>(() => IlgpuDevices.Resolve("tpu"));
        var description = IlgpuDevices.Describe();
        Assert.Contains("ilgpu-cpu: ", description);
        Assert.Contains("cuda", description);
    }

    [Fact]
    public void MissingCudaDeviceGivesAOneLineReason()
    {
        int gpus = IlgpuDevices.DevicesOf(DeviceKind.Cuda).Count;
        if (gpus > 0)
        {
            Assert.Equal(new Device(DeviceKind.Cuda), IlgpuDevices.Resolve("cuda"));
            var beyond = Assert.Throws<InvalidOperationException>(() => IlgpuDevices.Resolve($"cuda:{gpus}"));
            Assert.StartsWith($"no CUDA device {gpus}: this machine has {gpus}", beyond.Message);
            return;
        }
        var ex = Assert.Throws<InvalidOperationException>(() => IlgpuDevices.Resolve("cuda"));
        Assert.StartsWith("no CUDA device: ", ex.Message);
        Assert.Matches("libcuda\\.so\\.1 could not be loaded \\(is the NVIDIA driver installed\\?\\)|loaded but reports no usable GPU", ex.Message);
        Assert.DoesNotContain('\n', ex.Message);
        // The same reason through the Tensor API (BackendRegistry calls the registered factory).
        var viaTensor = Assert.Throws<InvalidOperationException>(() => Tensor.Zeros([2], device: new Device(DeviceKind.Cuda)));
        Assert.Equal(ex.Message, viaTensor.Message);
    }

    [Fact]
    public void MissingOpenClDeviceGivesAOneLineReason()
    {
        if (IlgpuDevices.DevicesOf(DeviceKind.OpenCL).Count > 0) return;
        var ex = Assert.Throws<InvalidOperationException>(() => IlgpuDevices.Resolve("opencl"));
        Assert.StartsWith("no OpenCL device: ", ex.Message);
        Assert.DoesNotContain('\n', ex.Message);
    }
}
