// Which SIMD code path the CPU backend takes on this machine. Float sums come out rounded differently
// at different vector widths (TensorPrimitives reduces Vector512, Vector256 or Vector128 lanes, as the
// hardware allows; the GEMM picks its AVX-512, AVX2 or portable micro-kernel), so a figure that depends
// on the last bits of a long training run names the path it came from. .NET decides the path when the
// process starts: DOTNET_EnableAVX512=0 takes the AVX2 paths on an AVX-512 CPU, DOTNET_EnableAVX2=0 the
// 128-bit ones.
using System.Runtime.Intrinsics;

namespace TinyLlama.Backends.Cpu;

/// <summary>The SIMD path of the CPU backend in this process.</summary>
public static class CpuInfo
{
    /// <summary>Width in bits of the widest hardware-accelerated vector (512, 256, 128), 0 without SIMD.</summary>
    public static int VectorBits =>
        Vector512.IsHardwareAccelerated ? 512 : Vector256.IsHardwareAccelerated ? 256 : Vector128.IsHardwareAccelerated ? 128 : 0;

    /// <summary>One line for logs: vector width, GEMM micro-kernel and thread count, e.g. "256-bit vectors, AVX2 GEMM kernel, 2 threads".</summary>
    public static string Describe() =>
        $"{(VectorBits == 0 ? "no SIMD" : $"{VectorBits}-bit vectors")}, {Gemm.Resolve(GemmKernel.Auto) switch
        {
            GemmKernel.Avx512 => "AVX-512",
            GemmKernel.Avx2 => "AVX2",
            _ => "portable",
        }} GEMM kernel, {CpuThreads.Count} thread{(CpuThreads.Count == 1 ? "" : "s")}";
}
