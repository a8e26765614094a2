// Reductions over dims with keepdim: sum, mean, max, min, argmax, argmin.
// Backward: sum broadcasts the gradient back; max/min send it to the extreme elements (split on ties).
using TinyLlama.Autograd;
using TinyLlama.Backends;

namespace TinyLlama.Tensors;

public sealed partial class Tensor
{
    private int[] NormalizeDims(int[]? dims, string op)
    {
        if (dims is null || dims.Length == 0) return Enumerable.Range(0, Rank).ToArray();
        var result = dims.Select(d => Shapes.NormalizeDim(d, Rank, op)).Distinct().OrderBy(d => d).ToArray();
        if (result.Length != dims.Length) throw new ArgumentException($"{op}: repeated dimension in {Shapes.Format(dims)}");
        return result;
    }

    private static int[] KeptShape(int[] shape, int[] dims, bool keepDim)
    {
        var s = new List<int>();
        for (int i = 0; i < shape.Length; i++)
        {
            if (dims.Contains(i)) { if (keepDim) s.Add(1); }
            else s.Add(shape[i]);
        }
        return s.ToArray();
    }

    private Tensor ReduceRaw(ReduceOp op, int[] dims, bool keepDim, string name)
    {
        if (!DType.IsFloat()) throw new ArgumentException($"{name}: expected a floating-point tensor, got {DType.Name()}");
        var x = CastRaw(ComputeType(DType));
        var keep = KeptShape(shape, dims, true);
        bool arg = op is ReduceOp.ArgMax or ReduceOp.ArgMin;
        var y = new Tensor(keep, arg ? DType.I32 : x.DType, Device);
        if (Rank == 0) Backend.Copy(arg ? Zeros([], DType.I32, Device) : x, y);
        else Backend.Reduce(op, x, dims, y);
        if (!arg) y = y.CastRaw(DType);
        return keepDim ? y : y.Detach().Reshape(KeptShape(shape, dims, false));
    }

    /// <summary>Sum over all elements.</summary>
    public Tensor Sum() => Sum(null, false);

    /// <summary>Sum over one dim.</summary>
    public Tensor Sum(int dim, bool keepDim = false) => Sum([dim], keepDim);

    /// <summary>Sum over dims (all when null).</summary>
    public Tensor Sum(int[]? dims, bool keepDim = false)
    {
        var x = this;
        var d = NormalizeDims(dims, "sum");
        var y = ReduceRaw(ReduceOp.Sum, d, keepDim, "sum");
        return Engine.Record(y, "SumBackward", [x], g => [g.Reshape(KeptShape(x.shape, d, true)).Expand(x.shape)]);
    }

    /// <summary>Mean over all elements.</summary>
    public Tensor Mean() => Mean(null, false);

    /// <summary>Mean over one dim.</summary>
    public Tensor Mean(int dim, bool keepDim = false) => Mean([dim], keepDim);

    /// <summary>Mean over dims (all when null).</summary>
    public Tensor Mean(int[]? dims, bool keepDim = false)
    {
        var d = NormalizeDims(dims, "mean");
        long count = 1;
        foreach (int i in d) count *= Rank == 0 ? 1 : shape[i];
        return Sum(d, keepDim) / count;
    }

    /// <summary>Maximum over all elements.</summary>
    public Tensor Max() => MaxMin(ReduceOp.Max, null, false);

    /// <summary>Maximum over one dim (values; see <see cref="ArgMax"/> for indices).</summary>
    public Tensor Max(int dim, bool keepDim = false) => MaxMin(ReduceOp.Max, [dim], keepDim);

    /// <summary>Minimum over all elements.</summary>
    public Tensor Min() => MaxMin(ReduceOp.Min, null, false);

    /// <summary>Minimum over one dim.</summary>
    public Tensor Min(int dim, bool keepDim = false) => MaxMin(ReduceOp.Min, [dim], keepDim);

    private Tensor MaxMin(ReduceOp op, int[]? dims, bool keepDim)
    {
        var x = this;
        string name = op == ReduceOp.Max ? "max" : "min";
        var d = NormalizeDims(dims, name);
        var y = ReduceRaw(op, d, keepDim, name);
        return Engine.Record(y, op + "Backward", [x], g =>
        {
            var keep = KeptShape(x.shape, d, true);
            var mask = x.Eq(y.Detach().Reshape(keep));
            var count = mask.Sum(d, keepDim: true);
            return [g.Reshape(keep) * mask / count];
        });
    }

    /// <summary>Index of the maximum along dim (I32; first on ties).</summary>
    public Tensor ArgMax(int dim, bool keepDim = false) => ReduceRaw(ReduceOp.ArgMax, [Shapes.NormalizeDim(dim, Rank, "argmax")], keepDim, "argmax");

    /// <summary>Index of the minimum along dim (I32; first on ties).</summary>
    public Tensor ArgMin(int dim, bool keepDim = false) => ReduceRaw(ReduceOp.ArgMin, [Shapes.NormalizeDim(dim, Rank, "argmin")], keepDim, "argmin");
}
