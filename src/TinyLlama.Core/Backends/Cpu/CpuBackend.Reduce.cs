// Reductions on the CPU: permute the reduced dims to the end (a view), make that dense if needed,
// then reduce each row of R = prod(reduced sizes) elements with a SIMD TensorPrimitives kernel.
using System.Numerics;
using System.Numerics.Tensors;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    public void Reduce(ReduceOp op, Tensor x, int[] dims, Tensor y)
    {
        CheckFloat(x, op.ToString());
        var reduced = new bool[x.Rank];
        foreach (int d in dims) reduced[d] = true;
        var perm = new List<int>();
        for (int d = 0; d < x.Rank; d++) if (!reduced[d]) perm.Add(d);
        for (int d = 0; d < x.Rank; d++) if (reduced[d]) perm.Add(d);
        var permShape = perm.Select(d => x.shape[d]).ToArray();
        var permStrides = perm.Select(d => x.strides[d]).ToArray();
        var xp = new Tensor(x.Storage, permShape, permStrides, x.Offset);
        if (!xp.IsContiguous)
        {
            var dense = new Tensor(permShape, x.DType, Device);
            Copy(xp, dense);
            xp = dense;
        }
        int rows = y.Numel;
        int r = rows == 0 ? 0 : x.Numel / rows;
        if (x.DType == DType.F32) ReduceTyped<float>(op, xp, y, rows, r);
        else ReduceTyped<double>(op, xp, y, rows, r);
    }

    private static void ReduceTyped<T>(ReduceOp op, Tensor x, Tensor y, int rows, int r)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (r == 0)
        {
            if (op != ReduceOp.Sum) throw new ArgumentException($"{op} of an empty dimension has no identity");
            Instance.Fill(y, 0);
            return;
        }
        CpuParallel.For(rows, r, (start, end) =>
        {
            var xs = Span<T>(x);
            for (int i = start; i < end; i++)
            {
                var row = xs.Slice(i * r, r);
                switch (op)
                {
                    case ReduceOp.Sum: Span<T>(y)[i] = TensorPrimitives.Sum<T>(row); break;
                    case ReduceOp.Max: Span<T>(y)[i] = TensorPrimitives.Max<T>(row); break;
                    case ReduceOp.Min: Span<T>(y)[i] = TensorPrimitives.Min<T>(row); break;
                    case ReduceOp.ArgMax: Span<int>(y)[i] = TensorPrimitives.IndexOfMax<T>(row); break;
                    case ReduceOp.ArgMin: Span<int>(y)[i] = TensorPrimitives.IndexOfMin<T>(row); break;
                }
            }
        });
    }
}
