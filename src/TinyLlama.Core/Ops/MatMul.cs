// Matrix products: a [..., M, K] @ b [..., K, N] -> [..., M, N] with batch dims broadcast.
// Backward: dA = dC @ B^T, dB = A^T @ dC (transposes are views; the GEMM reads strides), summed over
// broadcast batch dims.
using TinyLlama.Autograd;

namespace TinyLlama.Tensors;

public sealed partial class Tensor
{
    /// <summary>
    /// Matrix product with PyTorch's rules: 1-D operands are promoted (and the added dim removed),
    /// batch dims broadcast. 16-bit inputs accumulate in f32; the result has the inputs' dtype.
    /// </summary>
    public static Tensor MatMul(Tensor a, Tensor b)
    {
        if (a.Rank == 0 || b.Rank == 0) throw new ArgumentException("matmul: both arguments need at least 1 dimension");
        if (a.Rank == 1 && b.Rank == 1) return (a * b).Sum();
        if (a.Rank > 2 && b.Rank == 2)
        {
            // x [..., K] @ W [K, N]: fold the batch dims into M and run one GEMM (as PyTorch does),
            // instead of one product per batch entry against a broadcast W, whose backward would
            // also materialise a weight gradient per batch entry and sum them.
            var lead = a.Shape[..^1];
            var y2 = MatMul(a.Reshape(-1, a.shape[^1]), b);
            return y2.Reshape([.. lead, b.shape[1]]);
        }
        if (a.Rank == 1) return MatMul(a.Unsqueeze(0), b).Squeeze(-2);
        if (b.Rank == 1) return MatMul(a, b.Unsqueeze(-1)).Squeeze(-1);
        if (Autocast.Current is DType half)
        {
            // Mixed precision: 16-bit inputs, f32 accumulation, 16-bit output; the casts are recorded so
            // f32 parameters get f32 gradients.
            if (a.DType == DType.F32) a = a.To(half);
            if (b.DType == DType.F32) b = b.To(half);
        }
        if (a.DType != b.DType) throw new ArgumentException($"matmul: dtype mismatch, {a.DType.Name()} and {b.DType.Name()}");
        if (!a.DType.IsFloat()) throw new ArgumentException($"matmul: expected floating-point tensors, got {a.DType.Name()}");
        int m = a.shape[^2], k = a.shape[^1], k2 = b.shape[^2], n = b.shape[^1];
        if (k != k2)
            throw new ArgumentException($"matmul: shapes {Shapes.Format(a.shape)} and {Shapes.Format(b.shape)} cannot be multiplied ({k} != {k2})");
        var batch = Shapes.Broadcast(a.shape.AsSpan(0, a.Rank - 2), b.shape.AsSpan(0, b.Rank - 2), "matmul");
        var outShape = batch.Concat(new[] { m, n }).ToArray();
        var ae = a.Detach().Expand(batch.Concat(new[] { m, k }).ToArray());
        var be = b.Detach().Expand(batch.Concat(new[] { k, n }).ToArray());
        var accType = a.DType == DType.F64 ? DType.F64 : DType.F32;
        var y = new Tensor(outShape, accType, a.Device);
        a.Backend.MatMul(ae, be, y);
        y = y.CastRaw(a.DType);
        return Engine.Record(y, "MatMulBackward", [a, b], g => [
            a.RequiresGrad ? MatMul(g, b.MT).SumTo(a.shape) : null,
            b.RequiresGrad ? MatMul(a.MT, g).SumTo(b.shape) : null]);
    }

    /// <summary>this @ other.</summary>
    public Tensor MatMul(Tensor other) => MatMul(this, other);
}
