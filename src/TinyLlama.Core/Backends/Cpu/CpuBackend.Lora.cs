// The LoRA term of the fused LoRA linear on the CPU (Hu et al., 2021, eq. 3): y += s * u B^T, where
// u = dropout(x) A^T [N, r] was computed by the caller and y [N, out] already holds x W^T.
// Reference: Ops/Reference/LoraRef.cs. Autograd wrapper: Ops/Functional.Lora.cs.
// u is scaled first (N r multiplies instead of N out), then the packed GEMM accumulates u_s B^T into y
// in place: no [N, out] temporary and no merged weight W + s B A.
using System.Numerics.Tensors;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    public void LoraAdd(Tensor u, Tensor loraB, double scale, Tensor y)
    {
        CheckFloat(y, "lora");
        if (u.Rank != 2 || loraB.Rank != 2 || y.Rank != 2 || u.shape[1] != loraB.shape[1] || y.shape[0] != u.shape[0] || y.shape[1] != loraB.shape[0])
            throw new ArgumentException($"lora: u [N, r], B [out, r] and y [N, out] expected, got {Shapes.Format(u.shape)}, {Shapes.Format(loraB.shape)}, {Shapes.Format(y.shape)}");
        if (u.DType != y.DType || loraB.DType != y.DType) throw new ArgumentException($"lora: dtypes {u.DType.Name()}, {loraB.DType.Name()}, {y.DType.Name()} differ");
        var scaled = Tensor.Zeros(u.shape, u.DType, Device);
        if (u.DType == DType.F32) TensorPrimitives.Multiply<float>(Span<float>(u.Contiguous()), (float)scale, Span<float>(scaled));
        else TensorPrimitives.Multiply<double>(Span<double>(u.Contiguous()), scale, Span<double>(scaled));
        MatMul(scaled, loraB.MT, y, accumulate: true);   // y [N, out] += u_s [N, r] @ B^T [r, out]
    }
}
