// Reductions on the ILGPU backend (kernels/TinyLlama.Kernels/Reduce.cs): Reduce over any dims and the
// accumulated global sum of squares. The host splits x's dims into a kept layout and a reduced layout
// (no permuted copy of x), then picks the launch shape from the block size R and the output count.
using System.Numerics;
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

public sealed partial class IlgpuBackend
{
    /// <summary>
    /// Blocks of at least this many elements are reduced by a whole group (when there are fewer than
    /// <see cref="ManyRows"/> outputs or the block is very long); smaller ones by one thread per output,
    /// which needs no barriers and fills the device when outputs are many.
    /// </summary>
    private const int GroupedBlock = 64, ManyRows = 1024, LongBlock = 1024;

    /// <summary>Most partial sums the first SumOfSquares pass writes.</summary>
    private const int MaxPartials = 1024;

    public void Reduce(ReduceOp op, Tensor x, int[] dims, Tensor y)
    {
        string name = op.ToString();
        CheckFloat(x, name);
        bool arg = op is ReduceOp.ArgMax or ReduceOp.ArgMin;
        if (y.DType != (arg ? DType.I32 : x.DType))
            throw new ArgumentException($"{name}: output dtype {y.DType.Name()} (expected {(arg ? "int32" : x.DType.Name())})");
        var reduced = new bool[x.Rank];
        foreach (int d in dims)
        {
            if (d < 0 || d >= x.Rank) throw new ArgumentException($"{name}: dimension {d} is out of range for rank {x.Rank}");
            reduced[d] = true;
        }
        var shape = x.Shape;
        var strides = x.Strides;
        var keep = shape.Select((s, d) => reduced[d] ? 1 : s).ToArray();
        CheckShape(name, y, keep);
        var (outerSizes, outerStrides) = Merge(shape, strides, d => !reduced[d]);
        var (innerSizes, innerStrides) = Merge(shape, strides, d => reduced[d]);
        int rows = y.Numel;
        int r = rows == 0 ? 0 : x.Numel / rows;
        lock (gate)
        {
            Layouts(name, shape, x);   // bounds check of x
            CheckDense(y, name);
            if (rows == 0) return;
            if (r == 0)
            {
                if (op != ReduceOp.Sum) throw new ArgumentException($"{op} of an empty dimension has no identity");
                Fill(y, 0);
                return;
            }
            var outer = LayoutOf(name, outerSizes, outerStrides, x.Offset);
            var inner = LayoutOf(name, innerSizes, innerStrides, 0);
            bool grouped = r >= GroupedBlock && (rows < ManyRows || r >= LongBlock);
            if (x.DType == DType.F32) ReduceTyped<float>(op, x, outer, inner, r, y, rows, grouped);
            else ReduceTyped<double>(op, x, outer, inner, r, y, rows, grouped);
        }
    }

    private void ReduceTyped<T>(ReduceOp op, Tensor x, StridedLayout outer, StridedLayout inner, int r, Tensor y, int rows, bool grouped)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int code = op switch
        {
            ReduceOp.Sum => ReduceKernels.Sum,
            ReduceOp.Max => ReduceKernels.Max,
            ReduceOp.Min => ReduceKernels.Min,
            ReduceOp.ArgMax => ReduceKernels.ArgMax,
            ReduceOp.ArgMin => ReduceKernels.ArgMin,
            _ => throw new NotSupportedException(op.ToString()),
        };
        var xv = Whole<T>(x, "reduce");
        if (op is ReduceOp.ArgMax or ReduceOp.ArgMin)
        {
            var yv = Dense<int>(y, "reduce");
            if (grouped) Auto(ReduceKernels.ArgReduceGroupForwardKernel<T>, accelerator.LoadStreamKernel)(Rows(rows), xv, outer, inner, r, yv, code);
            else Auto(ReduceKernels.ArgReduceForwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(rows, xv, outer, inner, r, yv, code);
        }
        else
        {
            var yv = Dense<T>(y, "reduce");
            if (grouped) Auto(ReduceKernels.ReduceGroupForwardKernel<T>, accelerator.LoadStreamKernel)(Rows(rows), xv, outer, inner, r, yv, code);
            else Auto(ReduceKernels.ReduceForwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(rows, xv, outer, inner, r, yv, code);
        }
    }

    /// <summary>
    /// The selected dims of (shape, strides) in order with size-1 dims dropped and runs that are
    /// contiguous merged (so the layouts stay within StridedLayout.MaxRank for any realistic view).
    /// </summary>
    private static (int[] Sizes, int[] Strides) Merge(int[] shape, int[] strides, Func<int, bool> select)
    {
        var sizes = new List<int>();
        var st = new List<int>();
        for (int d = 0; d < shape.Length; d++)
        {
            if (!select(d) || shape[d] == 1) continue;
            if (sizes.Count > 0 && st[^1] == (long)strides[d] * shape[d])
            {
                sizes[^1] *= shape[d];
                st[^1] = strides[d];
                continue;
            }
            sizes.Add(shape[d]);
            st.Add(strides[d]);
        }
        return (sizes.ToArray(), st.ToArray());
    }

    public void SumOfSquares(Tensor x, Tensor result)
    {
        CheckFloat(x, "sum_of_squares");
        if (result.Numel != 1 || result.DType is not (DType.F32 or DType.F64))
            throw new ArgumentException($"sum_of_squares: result must be a one-element f32 or f64 tensor, got {result.DType.Name()} of shape {Shapes.Format(result.Shape)}");
        lock (gate)
        {
            var layout = Layouts("sum_of_squares", x.Shape, x)[0];
            Own(result, "sum_of_squares");
            int n = x.Numel;
            if (n == 0) return;
            int groups = (int)Math.Min(MaxPartials, Math.Min((n + GroupSize - 1L) / GroupSize, 4L * accelerator.NumMultiprocessors));
            // The partials live in a pooled buffer released right after the launches: stream order makes
            // the next tenant's writes run after these kernels.
            using var partials = (IlgpuStorage)Allocate(DType.F64, groups);
            var pv = partials.View<double>();
            if (x.DType == DType.F32)
                Auto(ReduceKernels.SumOfSquaresForwardKernel<float, F32>, accelerator.LoadStreamKernel)(new KernelConfig(groups, GroupSize), Whole<float>(x, "sum_of_squares"), layout, n, pv);
            else
                Auto(ReduceKernels.SumOfSquaresForwardKernel<double, F64>, accelerator.LoadStreamKernel)(new KernelConfig(groups, GroupSize), Whole<double>(x, "sum_of_squares"), layout, n, pv);
            if (result.DType == DType.F32)
                Auto(ReduceKernels.SumOfSquaresFinishKernel<float, F32>, accelerator.LoadStreamKernel)(new KernelConfig(1, GroupSize), pv, groups, Whole<float>(result, "sum_of_squares").SubView(result.Offset, 1));
            else
                Auto(ReduceKernels.SumOfSquaresFinishKernel<double, F64>, accelerator.LoadStreamKernel)(new KernelConfig(1, GroupSize), pv, groups, Whole<double>(result, "sum_of_squares").SubView(result.Offset, 1));
        }
    }
}
