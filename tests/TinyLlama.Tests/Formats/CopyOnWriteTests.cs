// A tensor viewing a mapped checkpoint may be updated in place (fine-tuning a loaded model) without
// faulting, and the file on disk stays unchanged.
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Formats;

public class CopyOnWriteTests
{
    [Fact]
    public void InPlaceUpdateOfAMappedTensorLeavesTheFileUnchanged()
    {
        var dir = Directory.CreateTempSubdirectory("tinyllama-cow-");
        try
        {
            var path = Path.Combine(dir.FullName, "w.safetensors");
            Safetensors.Save(path, new Dictionary<string, Tensor> { ["w"] = Tensor.FromArray(new float[] { 1, 2, 3, 4 }) });
            var before = File.ReadAllBytes(path);
            var w = SafetensorsFile.Open(path).Get("w");
            Assert.True(((CpuStorage)w.Storage).IsExternal);
            using (GradMode.NoGrad()) w.Mul_(10);
            Assert.Equal(new float[] { 10, 20, 30, 40 }, w.ToArray<float>());
            Assert.Equal(before, File.ReadAllBytes(path));
            Assert.Equal(new float[] { 1, 2, 3, 4 }, SafetensorsFile.Open(path).Get("w").ToArray<float>());
        }
        finally
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            try { dir.Delete(true); } catch (IOException) { }
        }
    }
}
