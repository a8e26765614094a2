// The LoRA term of the fused LoRA linear (Hu et al., 2021, eq. 3): y[n, o] += s * sum_j u[n, j] B[o, j],
// where y [N, out] already holds x W^T (the GEMM kernels) and u = dropout(x) A^T [N, r] (a thin GEMM).
// Math and reference: Ops/Functional.Lora.cs, Ops/Reference/LoraRef.cs.
//
// Tiling: one thread per element of y, consecutive threads along o. r is small (4-64), so the rank-r
// product is a thin GEMM with K = r, which the tiled GEMM (16-deep K tiles, 128 x 64 output tiles) would
// mostly spend on padding. Each thread reads its row of u (the same r values for a warp's threads: a
// broadcast, served from cache) and one row of B (r consecutive values; B is out x r, small enough to
// stay in L2), and does one read-modify-write of y. Traffic: N out (read + write of y) + the two thin
// operands once from DRAM; no [N, out] temporary and no merged weight W + s B A.
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>LoRA kernels.</summary>
public static class LoraKernels
{
    /// <summary>y[i] += scale * dot(u[n, :r], b[o, :r]) for element i = n out + o of y [N, out].</summary>
    public static void LoraAddKernel<T>(Index1D i, ArrayView<T> u, ArrayView<T> b, int r, int outF, T scale, ArrayView<T> y)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int n = i / outF, o = i - n * outF;
        int ur = n * r, br = o * r;
        T acc = T.Zero;
        for (int j = 0; j < r; j++) acc += u[ur + j] * b[br + j];
        y[i] += scale * acc;
    }
}
