// The ILGPU backend used from a library, as a .NET developer would, with nothing of the CLI: referencing
// TinyLlama.Backends.Ilgpu and calling IlgpuBackend.Register() once makes the ILGPU device kinds available to
// Tensor.To(Device) and Device.Backend; ops run there and agree with the CPU backend.
using TinyLlama.Backends;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Ilgpu;

[Collection("ilgpu")]
public class IlgpuLibraryUseTests
{
    [Fact]
    public void RegisterMakesIlgpuCpuAvailableToTensor()
    {
        IlgpuBackend.Register();
        IlgpuBackend.Register(); // idempotent
        var device = Device.Parse("ilgpu-cpu");
        Assert.IsType<IlgpuBackend>(BackendRegistry.Get(device));
        float[] values = [1, -2, 3, 4, 0.5f, 6];
        var x = Tensor.FromArray(values, [2, 3]).To(device);
        Assert.Equal(device, x.Device);
        Assert.IsType<IlgpuStorage>(x.Storage);
        // (x * 2 + x) @ x^T on the device: [2, 3] @ [3, 2] = [2, 2], against hand-computed values.
        var y = (x * 2 + x).MatMul(x.Transpose(0, 1));
        Assert.Equal(device, y.Device);
        var got = y.To(Device.Cpu).ToArray<float>();
        // row0 . row0 = 1 + 4 + 9 = 14; row0 . row1 = 4 - 1 + 18 = 21; row1 . row1 = 16 + 0.25 + 36 = 52.25; times 3.
        float[] expected = [42, 63, 63, 156.75f];
        for (int i = 0; i < expected.Length; i++) Assert.True(Math.Abs(got[i] - expected[i]) <= 1e-5f * Math.Abs(expected[i]), $"element {i}: {got[i]} vs {expected[i]}");
    }
}
