// RMSNorm (Zhang and Sennrich, 2019), forward and backward. Math: Backends/Cpu/CpuBackend.RmsNorm.cs:
//   rstd[n] = 1 / sqrt(mean_c x[n, c]^2 + eps);  y = x * rstd * weight
//   dx[n, c] = rstd g[c] - rstd^3 / C * x[n, c] * sum_c' g[c'] x[n, c'],  g = dy * weight
//   dWeight[c] = sum_n dy[n, c] x[n, c] rstd[n]
//
// Forward and dx: one group per row of C (contiguous rows), threads over columns t, t + DimX, ...;
// one GroupReduce (sum of squares, or the dot g . x) then the write pass. Traffic per row: 2 reads of x
// (3 of x and dy in backward), one read of weight, one write.
// dWeight, deterministic without atomics: the rows are cut into K chunks (the same count the CPU uses, a
// function of N and C only); RmsNormWeightBackwardKernel has one thread per (chunk, column) summing its
// rows in order into partial[k, c]; RmsNormWeightReduceKernel has one thread per column adding the K
// partials in chunk order. Traffic: one read of dy and x per element, 2 K C for the partials.
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>RMSNorm kernels.</summary>
public static class RmsNormKernels
{
    /// <summary>Row Grid.IdxX of x [N, C]: rstd[n] and y[n, :].</summary>
    public static void RmsNormForwardKernel<T>(ArrayView<T> x, ArrayView<T> weight, int c, T eps, T invC, ArrayView<T> y, ArrayView<T> rstd)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var scratch = SharedMemory.Allocate<T>(GroupReduce.MaxGroupSize);
        int row = Grid.IdxX, start = row * c;
        T acc = T.Zero;
        for (int j = Group.IdxX; j < c; j += Group.DimX) acc += x[start + j] * x[start + j];
        T s = T.One / T.Sqrt(GroupReduce.Sum(acc, scratch) * invC + eps);
        if (Group.IdxX == 0) rstd[row] = s;
        for (int j = Group.IdxX; j < c; j += Group.DimX) y[start + j] = x[start + j] * s * weight[j];
    }

    /// <summary>Row Grid.IdxX: dx[n, :] from dy, x, weight and the saved rstd.</summary>
    public static void RmsNormBackwardKernel<T>(ArrayView<T> dy, ArrayView<T> x, ArrayView<T> weight, ArrayView<T> rstd, int c, T invC, ArrayView<T> dx)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var scratch = SharedMemory.Allocate<T>(GroupReduce.MaxGroupSize);
        int row = Grid.IdxX, start = row * c;
        T acc = T.Zero;
        for (int j = Group.IdxX; j < c; j += Group.DimX) acc += dy[start + j] * weight[j] * x[start + j];
        T dot = GroupReduce.Sum(acc, scratch);
        T s = rstd[row];
        T k = -(s * s * s * invC * dot);
        for (int j = Group.IdxX; j < c; j += Group.DimX) dx[start + j] = dy[start + j] * weight[j] * s + x[start + j] * k;
    }

    /// <summary>partial[k, col] = sum over the rows of chunk k of dy[r, col] x[r, col] rstd[r] (i = k C + col).</summary>
    public static void RmsNormWeightBackwardKernel<T>(Index1D i, ArrayView<T> dy, ArrayView<T> x, ArrayView<T> rstd, int n, int c, int chunks, ArrayView<T> partial)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int k = i / c, col = i - k * c;
        int r0 = (int)((long)n * k / chunks), r1 = (int)((long)n * (k + 1) / chunks);
        T acc = T.Zero;
        for (int r = r0; r < r1; r++) acc += dy[r * c + col] * (x[r * c + col] * rstd[r]);
        partial[i] = acc;
    }

    /// <summary>dWeight[col] = sum over chunks k, in order, of partial[k, col].</summary>
    public static void RmsNormWeightReduceKernel<T>(Index1D col, ArrayView<T> partial, int c, int chunks, ArrayView<T> dWeight)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T acc = partial[col];
        for (int k = 1; k < chunks; k++) acc += partial[k * c + col];
        dWeight[col] = acc;
    }
}
