// Fused cross-entropy over the vocabulary. Math: Backends/Cpu/CpuBackend.Softmax.cs:
//   lse[n] = log sum_v exp(logits[n, v]);  loss[n] = lse[n] - logits[n, target[n]] (0 for ignored rows);
//   dLogits[n, v] = scale * (exp(logits[n, v] - lse[n]) - [v == target[n]]) (0 for ignored rows).
//
// Forward tiling: one group per row. Each thread keeps an online log-sum-exp pair (running max m and
// sum of exp(x - m), rescaled when m grows) over columns t, t + DimX, ..., so the row is read once;
// GroupReduce.LogSumExp merges the pairs. Traffic per row: V reads, 2 writes.
// Backward: one thread per logit, reusing the saved lse, so the probabilities are computed once, in the
// same pass that writes the gradient. Traffic: one read and one write per logit.
// A target outside [0, V) that is not the ignore index is recorded in the device error buffer
// (DeviceErrors) and its row contributes nothing.
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Cross-entropy kernels.</summary>
public static class CrossEntropyKernels
{
    /// <summary>lse and loss of row Grid.IdxX of logits [N, V].</summary>
    public static void CrossEntropyForwardKernel<T>(ArrayView<T> logits, ArrayView<int> targets, int v, int ignoreIndex, ArrayView<T> losses, ArrayView<T> lse, ArrayView<int> errors)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var maxScratch = SharedMemory.Allocate<T>(GroupReduce.MaxGroupSize);
        var sumScratch = SharedMemory.Allocate<T>(GroupReduce.MaxGroupSize);
        int row = Grid.IdxX, start = row * v;
        T m = T.NegativeInfinity, s = T.Zero;
        for (int j = Group.IdxX; j < v; j += Group.DimX)
        {
            T x = logits[start + j];
            if (x > m)
            {
                s = s * T.Exp(m - x) + T.One;   // exp(-inf) = 0 on the first element
                m = x;
            }
            else s += T.Exp(x - m);
        }
        GroupReduce.LogSumExp(ref m, ref s, maxScratch, sumScratch);
        if (Group.IdxX == 0)
        {
            T logZ = m + T.Log(s);
            lse[row] = logZ;
            int t = targets[row];
            bool bad = t != ignoreIndex && (uint)t >= (uint)v;
            if (bad) DeviceErrors.Report(errors, DeviceErrors.CrossEntropyTarget, t, row, v);
            losses[row] = t == ignoreIndex || bad ? T.Zero : logZ - logits[start + t];
        }
    }

    /// <summary>dLogits[i] for logit i of [N, V] (one thread per logit).</summary>
    /// <remarks>scale[0] is the upstream gradient, read on the device (no host round trip).</remarks>
    public static void CrossEntropyBackwardKernel<T>(Index1D i, ArrayView<T> logits, ArrayView<int> targets, ArrayView<T> lse, int v, int ignoreIndex, ArrayView<T> scale, ArrayView<T> dLogits)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int row = i / v, col = i - row * v;
        int t = targets[row];
        if (t == ignoreIndex) { dLogits[i] = T.Zero; return; }
        T p = T.Exp(logits[i] - lse[row]);
        dLogits[i] = (col == t ? p - T.One : p) * scale[0];
    }
}
