// The ILGPU backend assembly (IlgpuBackend and its buffer pool live here).
namespace TinyLlama.Backends.Ilgpu;

/// <summary>Version facts of the ILGPU backend.</summary>
public static class IlgpuInfo
{
    /// <summary>The ILGPU release the kernels are written and tested against.</summary>
    public const string IlgpuVersion = "1.5.3";
}
