// The fused LoRA linear's product on the CPU (Hu et al., 2021, eq. 3): c = a b + s (u v), as
// y = x W^T + s (xd A^T) B^T with u = xd A^T [N, r] computed by the caller.
// Reference: Ops/Reference/LoraRef.cs. Autograd wrapper: Ops/Functional.Lora.cs.
// The packed GEMM writes a b; u is scaled (M r multiplies instead of M N) and a second GEMM with K = r
// accumulates s u v into c in place: no [M, N] temporary and no merged weight W + s B A. With a mask (the
// backward under dropout) the low-rank term is formed in a temporary, masked, and added.
using System.Numerics;
using System.Numerics.Tensors;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    public void LowRankMatMul(Tensor a, Tensor b, Tensor u, Tensor v, double scale, Tensor c, Tensor? mask = null)
    {
        CheckFloat(c, "lora");
        Functional.CheckLowRankMatMul(a, b, u, v, c, mask);
        if (a.DType != c.DType || b.DType != c.DType || u.DType != c.DType || v.DType != c.DType || (mask is not null && mask.DType != c.DType))
            throw new ArgumentException($"lora: dtypes {a.DType.Name()}, {b.DType.Name()}, {u.DType.Name()}, {v.DType.Name()}, {(mask is null ? "" : mask.DType.Name() + ", ")}{c.DType.Name()} differ");
        if (c.DType == DType.F32) LowRankTerm<float>(a, b, u, v, (float)scale, c, mask);
        else LowRankTerm<double>(a, b, u, v, scale, c, mask);
    }

    /// <summary>c = a b + s u v (* mask on the second term) in T.</summary>
    private void LowRankTerm<T>(Tensor a, Tensor b, Tensor u, Tensor v, T scale, Tensor c, Tensor? mask)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        MatMul(a, b, c);                                  // c [M, N] = a b
        var scaled = Tensor.Zeros(u.shape, u.DType, Device);
        TensorPrimitives.Multiply<T>(Span<T>(u.Contiguous()), scale, Span<T>(scaled));
        if (mask is null)
        {
            MatMul(scaled, v, c, accumulate: true);       // c += (s u) v
            return;
        }
        // With a mask the low-rank term is formed apart, masked, then added: c += mask * ((s u) v).
        var low = Tensor.Zeros(c.shape, c.DType, Device);
        MatMul(scaled, v, low);
        TensorPrimitives.Multiply<T>(Span<T>(low), Span<T>(mask.Contiguous()), Span<T>(low));
        TensorPrimitives.Add<T>(Span<T>(c), Span<T>(low), Span<T>(c));
    }
}
