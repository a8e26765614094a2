// The kernels assembly: ILGPU kernels, one file per op family (see kernels/README.md).
namespace TinyLlama.Kernels;

/// <summary>Facts shared by the kernel files.</summary>
public static class KernelsInfo
{
    /// <summary>Threads per warp the kernels assume where they use warp-level shuffles.</summary>
    public const int WarpSize = 32;
}
