// Row-wise softmax and log-softmax, forward and backward. Math: Backends/Cpu/CpuBackend.Softmax.cs:
//   softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m), m = max_j x_j (m = 0 for a fully masked row);
//   log-softmax  = (x - m) - log sum_j exp(x_j - m);
//   backward: softmax dx = y (dy - sum(dy y)); log-softmax dx = dy - exp(y) sum(dy).
//
// Tiling: one group per row of N elements (rows are contiguous); thread t handles columns t, t + DimX, ...
// so the loads of a warp are coalesced. Forward: a max pass and a sum pass (two GroupReduce's), then the
// write pass. Traffic per row: 3 reads of x (the passes re-read it; it is usually cache-resident for
// vocabulary-sized rows) and one write of y. Backward: one reduction pass, one write pass: 2 reads of each
// input, one write.
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Softmax kernels.</summary>
public static class SoftmaxKernels
{
    /// <summary>y = softmax(x) (or log-softmax) of row Grid.IdxX; x, y are [rows, n].</summary>
    public static void SoftmaxForwardKernel<T>(ArrayView<T> x, ArrayView<T> y, int n, int log) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var scratch = SharedMemory.Allocate<T>(GroupReduce.MaxGroupSize);
        int start = Grid.IdxX * n;
        T m = T.NegativeInfinity;
        for (int j = Group.IdxX; j < n; j += Group.DimX) m = DeviceMath.MaxNaN(m, x[start + j]);
        m = GroupReduce.Max(m, scratch);
        if (T.IsNegativeInfinity(m)) m = T.Zero;
        T s = T.Zero;
        for (int j = Group.IdxX; j < n; j += Group.DimX) s += T.Exp(x[start + j] - m);
        s = GroupReduce.Sum(s, scratch);
        if (log != 0)
        {
            T logSum = T.Log(s);
            for (int j = Group.IdxX; j < n; j += Group.DimX) y[start + j] = x[start + j] - m - logSum;
        }
        else
        {
            for (int j = Group.IdxX; j < n; j += Group.DimX) y[start + j] = T.Exp(x[start + j] - m) / s;
        }
    }

    /// <summary>dx of row Grid.IdxX from the saved output y and dy; all [rows, n].</summary>
    public static void SoftmaxBackwardKernel<T>(ArrayView<T> y, ArrayView<T> dy, ArrayView<T> dx, int n, int log) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var scratch = SharedMemory.Allocate<T>(GroupReduce.MaxGroupSize);
        int start = Grid.IdxX * n;
        T acc = T.Zero;
        if (log != 0)
        {
            for (int j = Group.IdxX; j < n; j += Group.DimX) acc += dy[start + j];
            T sum = GroupReduce.Sum(acc, scratch);
            for (int j = Group.IdxX; j < n; j += Group.DimX) dx[start + j] = dy[start + j] - T.Exp(y[start + j]) * sum;
        }
        else
        {
            for (int j = Group.IdxX; j < n; j += Group.DimX) acc += dy[start + j] * y[start + j];
            T dot = GroupReduce.Sum(acc, scratch);
            for (int j = Group.IdxX; j < n; j += Group.DimX) dx[start + j] = (dy[start + j] - dot) * y[start + j];
        }
    }
}
