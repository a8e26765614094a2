// Reductions: Sum / Max / Min / ArgMax / ArgMin over any set of dimensions, and the global sum of squares
// (gradient clipping). Math: Backends/Cpu/CpuBackend.Reduce.cs (the CPU reduces each output's block with
// TensorPrimitives; ArgMax/ArgMin give the first index on ties, NaN wins, Max/Min propagate NaN).
//
// Layout: the host splits x's dims into kept dims (outer layout, one output element per position, with
// x's offset) and reduced dims (inner layout, offset 0); output element `row` reduces the block
// x[outer.IndexOf(row) + inner.IndexOf(j)] for j in [0, R). No dense copy of a permuted x is needed.
// Two launch shapes:
//  - small blocks (R <= a threshold chosen by the host): one thread per output element, sequential loop,
//    no barriers. Traffic: R reads per output, one write.
//  - large blocks: one group per output element; each thread strides over the block (j = tid, tid + DimX,
//    ...), then a GroupReduce. Traffic: R reads per output spread over the group, one write.
// Sum of squares: a grid-stride loop of G groups writes G partial sums (double), then one group adds the
// partials in order into result[0]: deterministic for a given G, which depends only on the size and the
// device. Traffic: one read per element.
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Reduction kernels.</summary>
public static class ReduceKernels
{
    // TinyLlama.Backends.ReduceOp order.
    public const int Sum = 0, Max = 1, Min = 2, ArgMax = 3, ArgMin = 4;

    /// <summary>y[row] = op over the block of output element row (one thread per output).</summary>
    public static void ReduceForwardKernel<T>(Index1D row, ArrayView<T> x, StridedLayout outer, StridedLayout inner, int r, ArrayView<T> y, int op)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int start = outer.IndexOf(row);
        T acc = Identity<T>(op);
        for (int j = 0; j < r; j++) acc = Combine(op, acc, x[start + inner.IndexOf(j)]);
        y[row] = acc;
    }

    /// <summary>y[row] = flat index of the extreme element of the block (one thread per output).</summary>
    public static void ArgReduceForwardKernel<T>(Index1D row, ArrayView<T> x, StridedLayout outer, StridedLayout inner, int r, ArrayView<int> y, int op)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int start = outer.IndexOf(row);
        T best = T.Zero;
        int bestIndex = int.MaxValue;
        for (int j = 0; j < r; j++)
        {
            T v = x[start + inner.IndexOf(j)];
            if (Better(op, v, j, best, bestIndex)) { best = v; bestIndex = j; }
        }
        y[row] = bestIndex;
    }

    /// <summary>y[Grid.IdxX] = op over the block (one group per output).</summary>
    public static void ReduceGroupForwardKernel<T>(ArrayView<T> x, StridedLayout outer, StridedLayout inner, int r, ArrayView<T> y, int op)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var scratch = SharedMemory.Allocate<T>(GroupReduce.MaxGroupSize);
        int row = Grid.IdxX, start = outer.IndexOf(row);
        T acc = Identity<T>(op);
        for (int j = Group.IdxX; j < r; j += Group.DimX) acc = Combine(op, acc, x[start + inner.IndexOf(j)]);
        T total = op == Sum ? GroupReduce.Sum(acc, scratch)
            : op == Max ? GroupReduce.Max(acc, scratch)
            : -GroupReduce.Max(-acc, scratch);
        if (Group.IdxX == 0) y[row] = total;
    }

    /// <summary>y[Grid.IdxX] = flat index of the extreme element of the block (one group per output).</summary>
    public static void ArgReduceGroupForwardKernel<T>(ArrayView<T> x, StridedLayout outer, StridedLayout inner, int r, ArrayView<int> y, int op)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var values = SharedMemory.Allocate<T>(GroupReduce.MaxGroupSize);
        var indices = SharedMemory.Allocate<int>(GroupReduce.MaxGroupSize);
        int row = Grid.IdxX, start = outer.IndexOf(row);
        T best = T.Zero;
        int bestIndex = int.MaxValue;
        for (int j = Group.IdxX; j < r; j += Group.DimX)
        {
            T v = x[start + inner.IndexOf(j)];
            if (Better(op, v, j, best, bestIndex)) { best = v; bestIndex = j; }
        }
        values[Group.IdxX] = best;
        indices[Group.IdxX] = bestIndex;
        Group.Barrier();
        if (Group.IdxX == 0)
        {
            // Better() breaks ties by index, so the scan order does not change the answer.
            for (int t = 1; t < Group.DimX; t++)
                if (Better(op, values[t], indices[t], best, bestIndex)) { best = values[t]; bestIndex = indices[t]; }
            y[row] = bestIndex;
        }
    }

    /// <summary>Partial sums of squares: partials[g] = sum over the elements group g visits of x^2 (in double).</summary>
    public static void SumOfSquaresForwardKernel<T, TE>(ArrayView<T> x, StridedLayout layout, int n, ArrayView<double> partials)
        where T : unmanaged where TE : struct, IElement<T>
    {
        var scratch = SharedMemory.Allocate<double>(GroupReduce.MaxGroupSize);
        double acc = 0;
        for (int i = Grid.IdxX * Group.DimX + Group.IdxX; i < n; i += Grid.DimX * Group.DimX)
        {
            double v = default(TE).ToDouble(x[layout.IndexOf(i)]);
            acc += v * v;
        }
        double total = GroupReduce.Sum(acc, scratch);
        if (Group.IdxX == 0) partials[Grid.IdxX] = total;
    }

    /// <summary>result[0] += sum of the partials, added in order (one group).</summary>
    public static void SumOfSquaresFinishKernel<TR, TRE>(ArrayView<double> partials, int count, ArrayView<TR> result)
        where TR : unmanaged where TRE : struct, IElement<TR>
    {
        var scratch = SharedMemory.Allocate<double>(GroupReduce.MaxGroupSize);
        double acc = 0;
        for (int i = Group.IdxX; i < count; i += Group.DimX) acc += partials[i];
        double total = GroupReduce.Sum(acc, scratch);
        if (Group.IdxX == 0) result[0] = default(TRE).FromDouble(default(TRE).ToDouble(result[0]) + total);
    }

    private static T Identity<T>(int op) where T : unmanaged, IFloatingPointIeee754<T> =>
        op == Sum ? T.Zero : op == Max ? T.NegativeInfinity : T.PositiveInfinity;

    private static T Combine<T>(int op, T acc, T v) where T : unmanaged, IFloatingPointIeee754<T> =>
        op == Sum ? acc + v : op == Max ? DeviceMath.MaxNaN(acc, v) : DeviceMath.MinNaN(acc, v);

    /// <summary>
    /// Whether candidate (v, j) beats the current (best, bestIndex) for ArgMax/ArgMin: NaN beats any number,
    /// then the larger (smaller) value, then the smaller index; bestIndex = int.MaxValue means "none yet".
    /// </summary>
    private static bool Better<T>(int op, T v, int j, T best, int bestIndex) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (j == int.MaxValue) return false;
        if (bestIndex == int.MaxValue) return true;
        bool vNaN = T.IsNaN(v), bNaN = T.IsNaN(best);
        if (vNaN || bNaN) return vNaN && (!bNaN || j < bestIndex);
        if (v == best) return j < bestIndex;
        return op == ArgMax ? v > best : v < best;
    }
}
