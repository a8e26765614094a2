// Concatenate, stack and split. Concat copies each input into a slice of the output (backward: slice
// the gradient); split returns views (backward: the slice's gradient padded with zeros).
using TinyLlama.Autograd;

namespace TinyLlama.Tensors;

public sealed partial class Tensor
{
    /// <summary>Joins tensors along an existing dim; all other sizes must match.</summary>
    public static Tensor Concat(IReadOnlyList<Tensor> tensors, int dim = 0)
    {
        if (tensors.Count == 0) throw new ArgumentException("concat: no tensors given");
        var first = tensors[0];
        int d = Shapes.NormalizeDim(dim, first.Rank, "concat");
        int total = 0;
        foreach (var t in tensors)
        {
            if (t.Rank != first.Rank || t.DType != first.DType || t.Device != first.Device)
                throw new ArgumentException($"concat: tensors of shape {Shapes.Format(first.shape)} ({first.DType.Name()}) and {Shapes.Format(t.shape)} ({t.DType.Name()}) cannot be joined");
            for (int i = 0; i < t.Rank; i++)
                if (i != d && t.shape[i] != first.shape[i])
                    throw new ArgumentException($"concat: shapes {Shapes.Format(first.shape)} and {Shapes.Format(t.shape)} differ outside dimension {d}");
            total += t.shape[d];
        }
        var outShape = first.Shape;
        outShape[d] = total;
        var y = new Tensor(outShape, first.DType, first.Device);
        var starts = new int[tensors.Count];
        int offset = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            starts[i] = offset;
            var slot = y.Detach().Narrow(d, offset, tensors[i].shape[d]);
            y.Backend.Copy(tensors[i].Detach(), slot);
            offset += tensors[i].shape[d];
        }
        var inputs = tensors.ToArray();
        return Engine.Record(y, "ConcatBackward", inputs, g =>
        {
            var grads = new Tensor?[inputs.Length];
            for (int i = 0; i < inputs.Length; i++)
                if (inputs[i].RequiresGrad) grads[i] = g.Narrow(d, starts[i], inputs[i].shape[d]).Contiguous();
            return grads;
        });
    }

    /// <summary>Joins same-shaped tensors along a new dim.</summary>
    public static Tensor Stack(IReadOnlyList<Tensor> tensors, int dim = 0)
    {
        if (tensors.Count == 0) throw new ArgumentException("stack: no tensors given");
        int d = dim < 0 ? dim + tensors[0].Rank + 1 : dim;
        foreach (var t in tensors)
            if (!t.shape.AsSpan().SequenceEqual(tensors[0].shape))
                throw new ArgumentException($"stack: shapes {Shapes.Format(tensors[0].shape)} and {Shapes.Format(t.shape)} differ");
        return Concat(tensors.Select(t => t.Unsqueeze(d)).ToArray(), d);
    }

    /// <summary>Views of consecutive pieces of the given sizes along dim.</summary>
    public Tensor[] Split(int[] sizes, int dim = 0)
    {
        int d = Shapes.NormalizeDim(dim, Rank, "split");
        if (sizes.Sum() != shape[d])
            throw new ArgumentException($"split: sizes {Shapes.Format(sizes)} do not add up to dimension {d} of size {shape[d]}");
        var parts = new Tensor[sizes.Length];
        int start = 0;
        for (int i = 0; i < sizes.Length; i++)
        {
            parts[i] = Narrow(d, start, sizes[i]);
            start += sizes[i];
        }
        return parts;
    }

    /// <summary>Views of pieces of size splitSize (the last may be smaller) along dim.</summary>
    public Tensor[] Split(int splitSize, int dim = 0)
    {
        int d = Shapes.NormalizeDim(dim, Rank, "split");
        if (splitSize <= 0) throw new ArgumentException("split: size must be positive");
        var sizes = new List<int>();
        for (int s = 0; s < shape[d]; s += splitSize) sizes.Add(Math.Min(splitSize, shape[d] - s));
        return Split(sizes.ToArray(), d);
    }

    /// <summary>Splits into the given number of (nearly) equal pieces along dim.</summary>
    public Tensor[] Chunk(int chunks, int dim = 0)
    {
        int d = Shapes.NormalizeDim(dim, Rank, "chunk");
        return Split((shape[d] + chunks - 1) / chunks, d);
    }
}
