// Shape arithmetic shared by the tensor views and ops: element counts, contiguous strides,
// NumPy broadcasting, dimension normalisation, and the stride rule that decides when a reshape is a view.
namespace TinyLlama.Tensors;

/// <summary>Helpers on shapes (int arrays, outermost dimension first).</summary>
public static class Shapes
{
    /// <summary>Number of elements: the product of the sizes (1 for a scalar).</summary>
    public static int Numel(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (int s in shape) n *= s;
        if (n > int.MaxValue) throw new ArgumentException($"shape {Format(shape)} has {n} elements; at most {int.MaxValue} are supported per tensor");
        return (int)n;
    }

    /// <summary>Row-major strides for a dense tensor of this shape.</summary>
    public static int[] ContiguousStrides(ReadOnlySpan<int> shape)
    {
        var strides = new int[shape.Length];
        int s = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            strides[i] = s;
            s *= Math.Max(shape[i], 1);
        }
        return strides;
    }

    /// <summary>
    /// The strides a kernel actually steps: those of <paramref name="strides"/> with every size-1 dimension's
    /// set to 0. A size-1 dimension is never stepped, so its stride is arbitrary (a transposed view of one
    /// position keeps the stride of its old place); layouts that differ only there are the same layout.
    /// </summary>
    public static int[] SteppedStrides(ReadOnlySpan<int> shape, ReadOnlySpan<int> strides)
    {
        var stepped = strides.ToArray();
        for (int i = 0; i < shape.Length; i++)
            if (shape[i] == 1) stepped[i] = 0;
        return stepped;
    }

    /// <summary>"[2, 3, 4]".</summary>
    public static string Format(ReadOnlySpan<int> shape) => "[" + string.Join(", ", shape.ToArray()) + "]";

    /// <summary>
    /// The NumPy broadcast of two shapes: align on the right; each pair of sizes must be equal or one of them 1.
    /// </summary>
    public static int[] Broadcast(ReadOnlySpan<int> a, ReadOnlySpan<int> b, string op)
    {
        int n = Math.Max(a.Length, b.Length);
        var result = new int[n];
        for (int i = 0; i < n; i++)
        {
            int da = i < n - a.Length ? 1 : a[i - (n - a.Length)];
            int db = i < n - b.Length ? 1 : b[i - (n - b.Length)];
            if (da != db && da != 1 && db != 1)
                throw new ArgumentException($"{op}: shapes {Format(a)} and {Format(b)} cannot be broadcast (dimension {i}: {da} vs {db})");
            result[i] = da == 1 ? db : da;
        }
        return result;
    }

    /// <summary>Maps a possibly negative dimension into [0, rank).</summary>
    public static int NormalizeDim(int dim, int rank, string op)
    {
        int r = Math.Max(rank, 1);
        if (dim < -r || dim >= r)
            throw new ArgumentException($"{op}: dimension {dim} is out of range for a tensor of rank {rank}");
        return dim < 0 ? dim + r : dim;
    }

    /// <summary>
    /// Strides that let a tensor of (shape, strides) be viewed as newShape without copying, or null when
    /// the memory layout does not allow it (then a reshape must copy). Follows the rule PyTorch uses:
    /// each run of old dimensions that merges into new ones must itself be contiguous.
    /// </summary>
    public static int[]? ViewStrides(ReadOnlySpan<int> shape, ReadOnlySpan<int> strides, ReadOnlySpan<int> newShape)
    {
        var newStrides = new int[newShape.Length];
        if (Numel(shape) == 0 || shape.Length == 0)
            return ContiguousStrides(newShape);
        int viewD = newShape.Length - 1;
        int chunkBaseStride = strides[^1];
        long tensorNumel = 1, viewNumel = 1;
        for (int tensorD = shape.Length - 1; tensorD >= 0; tensorD--)
        {
            tensorNumel *= shape[tensorD];
            if (tensorD == 0 || (shape[tensorD - 1] != 1 && strides[tensorD - 1] != tensorNumel * chunkBaseStride))
            {
                while (viewD >= 0 && (viewNumel < tensorNumel || newShape[viewD] == 1))
                {
                    newStrides[viewD] = (int)(viewNumel * chunkBaseStride);
                    viewNumel *= newShape[viewD];
                    viewD--;
                }
                if (viewNumel != tensorNumel) return null;
                if (tensorD > 0)
                {
                    chunkBaseStride = strides[tensorD - 1];
                    tensorNumel = 1;
                    viewNumel = 1;
                }
            }
        }
        return viewD == -1 ? newStrides : null;
    }

    /// <summary>Resolves one -1 entry in a requested shape from the element count.</summary>
    public static int[] InferShape(ReadOnlySpan<int> requested, int numel, string op)
    {
        var shape = requested.ToArray();
        int infer = -1;
        long known = 1;
        for (int i = 0; i < shape.Length; i++)
        {
            if (shape[i] == -1)
            {
                if (infer >= 0) throw new ArgumentException($"{op}: only one dimension can be -1 in {Format(requested)}");
                infer = i;
            }
            else if (shape[i] < 0) throw new ArgumentException($"{op}: invalid size {shape[i]} in {Format(requested)}");
            else known *= shape[i];
        }
        if (infer >= 0)
        {
            if (known == 0 || numel % known != 0)
                throw new ArgumentException($"{op}: shape {Format(requested)} is invalid for {numel} elements");
            shape[infer] = (int)(numel / known);
        }
        else if (known != numel)
            throw new ArgumentException($"{op}: shape {Format(requested)} is invalid for {numel} elements");
        return shape;
    }
}
