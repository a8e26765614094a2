// Views: new shape/strides/offset over the same storage, no copy. Each records the backward that maps
// the view's gradient back onto the source's shape (reshape back, inverse permute, pad with zeros, sum).
using TinyLlama.Autograd;

namespace TinyLlama.Tensors;

public sealed partial class Tensor
{
    private Tensor MakeView(int[] newShape, int[] newStrides, int newOffset, string name, Func<Tensor, Tensor> backward)
    {
        var v = new Tensor(Storage, newShape, newStrides, newOffset);
        return Engine.Record(v, name, [this], g => [backward(g)]);
    }

    /// <summary>The same elements with a new shape; fails if the strides do not allow a view (use <see cref="Reshape"/>).</summary>
    public Tensor View(params int[] newShape)
    {
        var target = Shapes.InferShape(newShape, Numel, "view");
        var st = Shapes.ViewStrides(shape, strides, target)
            ?? throw new InvalidOperationException($"view: shape {Shapes.Format(target)} is not compatible with the strides {Shapes.Format(strides)} of a {Shapes.Format(shape)} tensor; use Reshape (which copies)");
        var src = shape;
        return MakeView(target, st, Offset, "ViewBackward", g => g.Reshape(src));
    }

    /// <summary>A view when the layout allows, otherwise a contiguous copy with the new shape.</summary>
    public Tensor Reshape(params int[] newShape)
    {
        var target = Shapes.InferShape(newShape, Numel, "reshape");
        return Shapes.ViewStrides(shape, strides, target) is not null ? View(target) : Contiguous().View(target);
    }

    /// <summary>Flattens dims start..end (inclusive) into one.</summary>
    public Tensor Flatten(int startDim = 0, int endDim = -1)
    {
        if (Rank == 0) return Reshape(1);
        int s = Shapes.NormalizeDim(startDim, Rank, "flatten"), e = Shapes.NormalizeDim(endDim, Rank, "flatten");
        var ns = new List<int>();
        for (int i = 0; i < s; i++) ns.Add(shape[i]);
        int prod = 1;
        for (int i = s; i <= e; i++) prod *= shape[i];
        ns.Add(prod);
        for (int i = e + 1; i < Rank; i++) ns.Add(shape[i]);
        return Reshape(ns.ToArray());
    }

    /// <summary>Reorders dimensions: result dim i is source dim dims[i].</summary>
    public Tensor Permute(params int[] dims)
    {
        if (dims.Length != Rank) throw new ArgumentException($"permute: {dims.Length} dims given for a tensor of rank {Rank}");
        var seen = new bool[Rank];
        var ns = new int[Rank];
        var nst = new int[Rank];
        var inverse = new int[Rank];
        for (int i = 0; i < Rank; i++)
        {
            int d = Shapes.NormalizeDim(dims[i], Rank, "permute");
            if (seen[d]) throw new ArgumentException($"permute: dimension {d} repeated in {Shapes.Format(dims)}");
            seen[d] = true;
            ns[i] = shape[d];
            nst[i] = strides[d];
            inverse[d] = i;
        }
        return MakeView(ns, nst, Offset, "PermuteBackward", g => g.Permute(inverse));
    }

    /// <summary>Swaps two dimensions.</summary>
    public Tensor Transpose(int dim0, int dim1)
    {
        int a = Shapes.NormalizeDim(dim0, Rank, "transpose"), b = Shapes.NormalizeDim(dim1, Rank, "transpose");
        var perm = Enumerable.Range(0, Rank).ToArray();
        (perm[a], perm[b]) = (perm[b], perm[a]);
        return Permute(perm);
    }

    /// <summary>Transpose of the last two dimensions (PyTorch's mT).</summary>
    public Tensor MT => Transpose(-2, -1);

    /// <summary>Elements start..start+length-1 along dim.</summary>
    public Tensor Narrow(int dim, int start, int length)
    {
        int d = Shapes.NormalizeDim(dim, Rank, "narrow");
        if (start < 0) start += shape[d];
        if (start < 0 || length < 0 || start + length > shape[d])
            throw new ArgumentException($"narrow: range [{start}, {start + length}) is outside dimension {d} of size {shape[d]}");
        return Slice(d, start, start + length);
    }

    /// <summary>Elements start, start+step, ... below end along dim (Python's x[start:end:step]).</summary>
    public Tensor Slice(int dim, int start, int end, int step = 1)
    {
        int d = Shapes.NormalizeDim(dim, Rank, "slice");
        if (step <= 0) throw new ArgumentException("slice: step must be positive");
        int size = shape[d];
        if (start < 0) start += size;
        if (end < 0) end += size;
        start = Math.Clamp(start, 0, size);
        end = Math.Clamp(end, start, size);
        var ns = Shape;
        var nst = Strides;
        ns[d] = (end - start + step - 1) / step;
        nst[d] = strides[d] * step;
        var src = shape;
        return MakeView(ns, nst, Offset + start * strides[d], "SliceBackward",
            g => Tensor.ScatterView(g, src, z => z.Slice(d, start, end, step)));
    }

    /// <summary>The slice at index along dim, with that dim removed.</summary>
    public Tensor Select(int dim, int index)
    {
        int d = Shapes.NormalizeDim(dim, Rank, "select");
        if (index < -shape[d] || index >= shape[d])
            throw new ArgumentException($"select: index {index} is out of range for dimension {d} of size {shape[d]}");
        if (index < 0) index += shape[d];
        var ns = shape.Where((_, i) => i != d).ToArray();
        var nst = strides.Where((_, i) => i != d).ToArray();
        var src = shape;
        int idx = index;
        return MakeView(ns, nst, Offset + index * strides[d], "SelectBackward",
            g => Tensor.ScatterView(g, src, z => z.Select(d, idx)));
    }

    /// <summary>x[i]: selects index i of the first dimension.</summary>
    [System.Runtime.CompilerServices.IndexerName("At")]
    public Tensor this[int index] => Select(0, index);

    /// <summary>x[i, j, ...]: selects leading indices.</summary>
    [System.Runtime.CompilerServices.IndexerName("At")]
    public Tensor this[int i, int j] => Select(0, i).Select(0, j);

    /// <summary>Broadcasts size-1 dims (and new leading dims) to the given shape with stride 0; -1 keeps a size.</summary>
    public Tensor Expand(params int[] newShape)
    {
        if (newShape.Length < Rank)
            throw new ArgumentException($"expand: target {Shapes.Format(newShape)} has fewer dims than {Shapes.Format(shape)}");
        int lead = newShape.Length - Rank;
        var ns = new int[newShape.Length];
        var nst = new int[newShape.Length];
        for (int i = 0; i < newShape.Length; i++)
        {
            int target = newShape[i];
            if (i < lead)
            {
                if (target < 0) throw new ArgumentException($"expand: -1 is not allowed for new leading dimension {i}");
                ns[i] = target;
                nst[i] = 0;
                continue;
            }
            int s = shape[i - lead];
            if (target == -1) target = s;
            if (s != target && s != 1)
                throw new ArgumentException($"expand: cannot expand {Shapes.Format(shape)} to {Shapes.Format(newShape)} (dimension {i}: {s} -> {target})");
            ns[i] = target;
            nst[i] = s == target ? strides[i - lead] : 0;
        }
        if (ns.AsSpan().SequenceEqual(shape)) return this;
        var src = shape;
        return MakeView(ns, nst, Offset, "ExpandBackward", g => g.SumTo(src));
    }

    /// <summary>Expands to another tensor's shape.</summary>
    public Tensor ExpandAs(Tensor other) => Expand(other.shape);

    /// <summary>Removes all size-1 dims.</summary>
    public Tensor Squeeze()
    {
        var ns = shape.Where(s => s != 1).ToArray();
        return ns.Length == Rank ? this : Reshape(ns);
    }

    /// <summary>Removes dim if its size is 1.</summary>
    public Tensor Squeeze(int dim)
    {
        int d = Shapes.NormalizeDim(dim, Rank, "squeeze");
        if (shape[d] != 1) return this;
        var ns = shape.Where((_, i) => i != d).ToArray();
        var nst = strides.Where((_, i) => i != d).ToArray();
        var src = shape;
        return MakeView(ns, nst, Offset, "SqueezeBackward", g => g.Reshape(src));
    }

    /// <summary>Inserts a size-1 dim at position dim (which may equal the rank).</summary>
    public Tensor Unsqueeze(int dim)
    {
        int d = dim < 0 ? dim + Rank + 1 : dim;
        if (d < 0 || d > Rank) throw new ArgumentException($"unsqueeze: dimension {dim} is out of range for rank {Rank}");
        var ns = shape.ToList();
        var nst = strides.ToList();
        ns.Insert(d, 1);
        nst.Insert(d, d < Rank ? strides[d] * shape[d] : 1);
        var src = shape;
        return MakeView(ns.ToArray(), nst.ToArray(), Offset, "UnsqueezeBackward", g => g.Reshape(src));
    }

    /// <summary>This tensor if contiguous, else a dense copy (gradient passes straight through).</summary>
    public Tensor Contiguous() => IsContiguous ? this : Clone();

    /// <summary>A dense copy with its own storage (gradient passes straight through).</summary>
    public Tensor Clone()
    {
        var y = new Tensor(Shape, DType, Device);
        Backend.Copy(this, y);
        return Engine.Record(y, "CloneBackward", [this], g => [g]);
    }

    /// <summary>Converts to another dtype (a copy unless it already has it); the gradient is cast back.</summary>
    public Tensor To(DType dtype)
    {
        if (dtype == DType) return this;
        var y = CastRaw(dtype);
        var src = DType;
        return Engine.Record(y, "ToBackward", [this], g => [g.To(src)]);
    }

    /// <summary>Copies to another device (explicit transfer); the gradient is copied back.</summary>
    public Tensor To(Device device)
    {
        if (device == Device) return this;
        var dense = Contiguous();
        var y = new Tensor(Shape, DType, device);
        TransferTo(dense, y);
        var src = Device;
        return Engine.Record(y, "ToDeviceBackward", [this], g => [g.To(src)]);
    }

    private static void TransferTo(Tensor dense, Tensor dst)
    {
        // Through host memory: download from the source backend, upload to the destination.
        switch (dense.DType)
        {
            case DType.F32: { var h = new float[dense.Numel]; dense.Backend.Download<float>(dense, h); dst.Backend.Upload<float>(h, dst.Storage); break; }
            case DType.F64: { var h = new double[dense.Numel]; dense.Backend.Download<double>(dense, h); dst.Backend.Upload<double>(h, dst.Storage); break; }
            case DType.F16: { var h = new Half[dense.Numel]; dense.Backend.Download<Half>(dense, h); dst.Backend.Upload<Half>(h, dst.Storage); break; }
            case DType.BF16: { var h = new BFloat16[dense.Numel]; dense.Backend.Download<BFloat16>(dense, h); dst.Backend.Upload<BFloat16>(h, dst.Storage); break; }
            case DType.I32: { var h = new int[dense.Numel]; dense.Backend.Download<int>(dense, h); dst.Backend.Upload<int>(h, dst.Storage); break; }
            case DType.Q4 or DType.Q8_0 or DType.Q4_K or DType.Q6_K: { var h = new byte[dense.Numel]; dense.Backend.Download<byte>(dense, h); dst.Backend.Upload<byte>(h, dst.Storage); break; }
        }
    }

    /// <summary>Dtype conversion without autograd (for ops that compute 16-bit types in f32).</summary>
    internal Tensor CastRaw(DType dtype)
    {
        if (dtype == DType) return this;
        var y = new Tensor(Shape, dtype, Device);
        Backend.Copy(this, y);
        return y;
    }

    /// <summary>zeros(shape) with g written into the view that <paramref name="view"/> selects (backward of slicing).</summary>
    internal static Tensor ScatterView(Tensor g, int[] shape, Func<Tensor, Tensor> view)
    {
        var z = Zeros(shape, g.DType, g.Device);
        Tensor target;
        using (GradMode.NoGrad()) target = view(z);
        z.Backend.Copy(g, target);
        return z;
    }
}
