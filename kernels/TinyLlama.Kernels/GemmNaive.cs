// GEMM version 1 (see GemmKernels.cs): one thread per element of c, no tiling.
// Tiling: groups of 16 x 16 threads over (column, row) of c, grid z over the batch (looping when the
// batch exceeds the grid). Each thread computes one K-long dot product in f32 straight from global
// memory. Traffic: 2K element loads per output; consecutive threads (consecutive columns) read the same
// element of a (a broadcast) and consecutive elements of b when b is row-major (coalesced).
using ILGPU;

namespace TinyLlama.Kernels;

public static partial class GemmKernels
{
    /// <summary>Side of the square thread group of version 1.</summary>
    internal const int NaiveTile = 16;

    /// <summary>c[z][row, col] = sum_k a[z][row, k] b[z][k, col] (+ c[z][row, col]): one thread per output.</summary>
    internal static void MatMulForwardKernel1<TA, EA, TB, EB, TC, EC>(ArrayView<TA> a, ArrayView<TB> b, ArrayView<TC> c, GemmParams p)
        where TA : unmanaged where EA : struct, IGemmElement<TA>
        where TB : unmanaged where EB : struct, IGemmElement<TB>
        where TC : unmanaged where EC : struct, IGemmElement<TC>
    {
        EA ea = default;
        EB eb = default;
        EC ec = default;
        int col = Grid.IdxX * Group.DimX + Group.IdxX;
        int row = Grid.IdxY * Group.DimY + Group.IdxY;
        if (row >= p.M || col >= p.N) return;   // no barriers below, so idle threads may leave
        for (int z = Grid.IdxZ; z < p.BatchCount; z += Grid.DimZ)
        {
            int aRow = p.ABase(z) + row * p.ARowStride;
            int bCol = p.BBase(z) + col * p.BColStride;
            float acc = 0;
            for (int k = 0; k < p.K; k++)
                acc += ea.ToFloat(a[aRow + k * p.AColStride]) * eb.ToFloat(b[bCol + k * p.BRowStride]);
            int ci = p.CBase(z) + row * p.CRowStride + col * p.CColStride;
            if (p.Accumulate != 0) acc += ec.ToFloat(c[ci]);
            c[ci] = ec.FromFloat(acc);
        }
    }
}
