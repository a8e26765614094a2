// The fused LoRA linear's product on the CPU (Hu et al., 2021, eq. 3): c = a b + s (u v), as
// y = x W^T + s (xd A^T) B^T with u = xd A^T [N, r] computed by the caller.
// Reference: Ops/Reference/LoraRef.cs. Autograd wrapper: Ops/Functional.Lora.cs.
// The packed GEMM writes a b; u is scaled (M r multiplies instead of M N) and a second GEMM with K = r
// accumulates s u v into c in place: no [M, N] temporary and no merged weight W + s B A. With a mask (the
// backward under dropout) the low-rank term is formed in a temporary, masked, and added.
using System.Numerics.Tensors;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    public void LowRankMatMul(Tensor a, Tensor b, Tensor u, Tensor v, double scale, Tensor c, Tensor? mask = null)
    {
        CheckFloat(c, "lora");
        if (a.Rank != 2 || b.Rank != 2 || u.Rank != 2 || v.Rank != 2 || c.Rank != 2 || a.shape[1] != b.shape[0] || u.shape[1] != v.shape[0]
            || c.shape[0] != a.shape[0] || c.shape[0] != u.shape[0] || c.shape[1] != b.shape[1] || c.shape[1] != v.shape[1]
            || (mask is not null && !mask.shape.AsSpan().SequenceEqual(c.shape)))
            throw new ArgumentException($"lora: a [M, K] @ b [K, N] + u [M, R] @ v [R, N] (* mask [M, N]) -> c [M, N] expected, got {Shapes.Format(a.shape)}, {Shapes.Format(b.shape)}, {Shapes.Format(u.shape)}, {Shapes.Format(v.shape)}, {(mask is null ? "" : Shapes.Format(mask.shape) + ", ")}{Shapes.Format(c.shape)}");
        if (a.DType != c.DType || b.DType != c.DType || u.DType != c.DType || v.DType != c.DType || (mask is not null && mask.DType != c.DType))
            throw new ArgumentException($"lora: dtypes {a.DType.Name()}, {b.DType.Name()}, {u.DType.Name()}, {v.DType.Name()}, {(mask is null ? "" : mask.DType.Name() + ", ")}{c.DType.Name()} differ");
        MatMul(a, b, c);                                  // c [M, N] = a b
        var scaled = Tensor.Zeros(u.shape, u.DType, Device);
        if (u.DType == DType.F32) TensorPrimitives.Multiply<float>(Span<float>(u.Contiguous()), (float)scale, Span<float>(scaled));
        else TensorPrimitives.Multiply<double>(Span<double>(u.Contiguous()), scale, Span<double>(scaled));
        if (mask is null)
        {
            MatMul(scaled, v, c, accumulate: true);       // c += (s u) v
            return;
        }
        // With a mask the low-rank term is formed apart, masked, then added: c += mask * ((s u) v).
        var low = Tensor.Zeros(c.shape, c.DType, Device);
        MatMul(scaled, v, low);
        if (c.DType == DType.F32)
        {
            TensorPrimitives.Multiply<float>(Span<float>(low), Span<float>(mask.Contiguous()), Span<float>(low));
            TensorPrimitives.Add<float>(Span<float>(c), Span<float>(low), Span<float>(c));
        }
        else
        {
            TensorPrimitives.Multiply<double>(Span<double>(low), Span<double>(mask.Contiguous()), Span<double>(low));
            TensorPrimitives.Add<double>(Span<double>(c), Span<double>(low), Span<double>(c));
        }
    }
}
