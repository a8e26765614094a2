// Group-wide reductions for the one-group-per-row kernels (softmax, cross-entropy, RMSNorm, reductions).
//
// Method: every thread stores its partial in shared memory, one barrier, then every thread adds the
// DimX partials itself in thread order, and a second barrier frees the scratch for reuse. Two barriers
// per reduction whatever the group size, every thread gets the same bits (the order is fixed, so the
// result is deterministic), and nothing assumes a warp size: the same code runs on CUDA (256-thread
// groups), OpenCL, and ILGPU's CPU accelerator, where each barrier is an OS-level rendezvous of all the
// group's threads and so dominates the cost. The price on a GPU is DimX broadcast reads of shared memory
// per thread (256 for the usual group), small next to the row loops these kernels run; a warp-shuffle
// tree would cut it to log2(32) shuffles plus DimX/32 reads (listed as performance work).
//
// Memory traffic: shared memory only (scratch of MaxGroupSize elements per reduced quantity).
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Deterministic all-reduce over the threads of a group.</summary>
public static class GroupReduce
{
    /// <summary>Largest group size the grouped kernels are launched with (the shared scratch size).</summary>
    public const int MaxGroupSize = 256;

    /// <summary>Sum of every thread's value, returned to every thread.</summary>
    public static T Sum<T>(T value, ArrayView<T> scratch) where T : unmanaged, INumberBase<T>
    {
        scratch[Group.IdxX] = value;
        Group.Barrier();
        T total = T.Zero;
        for (int i = 0; i < Group.DimX; i++) total += scratch[i];
        Group.Barrier();
        return total;
    }

    /// <summary>Maximum of every thread's value (NaN if any is NaN), returned to every thread.</summary>
    public static T Max<T>(T value, ArrayView<T> scratch) where T : unmanaged, IFloatingPointIeee754<T>
    {
        scratch[Group.IdxX] = value;
        Group.Barrier();
        T best = scratch[0];
        for (int i = 1; i < Group.DimX; i++) best = DeviceMath.MaxNaN(best, scratch[i]);
        Group.Barrier();
        return best;
    }

    /// <summary>
    /// Combines every thread's (max, sum of exp(x - max)) pair of an online log-sum-exp, returned to every
    /// thread: m = max m_i, s = sum s_i exp(m_i - m). Pairs with m_i = -inf (no elements) add nothing.
    /// </summary>
    public static void LogSumExp<T>(ref T max, ref T sum, ArrayView<T> maxScratch, ArrayView<T> sumScratch)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        maxScratch[Group.IdxX] = max;
        sumScratch[Group.IdxX] = sum;
        Group.Barrier();
        T m = T.NegativeInfinity;
        for (int i = 0; i < Group.DimX; i++) m = DeviceMath.MaxNaN(m, maxScratch[i]);
        T s = T.Zero;
        if (!T.IsNegativeInfinity(m))
            for (int i = 0; i < Group.DimX; i++)
                if (!T.IsNegativeInfinity(maxScratch[i])) s += sumScratch[i] * T.Exp(maxScratch[i] - m);
        Group.Barrier();
        max = m;
        sum = s;
    }
}
