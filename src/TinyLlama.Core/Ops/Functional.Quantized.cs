// Linear layer with int4 weights: y = x W^T where W [out, in] is stored as Q4_0 blocks (llama.cpp's
// layout, Quantization/QuantType.cs) and expanded only where it is used (IBackend.MatMulQ4: in registers
// on the CPU's small-M path and in the ILGPU kernels). The weights are frozen, as in QLoRA: the only
// gradient is dx = dy W, for which W is expanded once into a temporary and multiplied on the GEMM.
// Naive definition: Ops/Reference/MatMulQ4Ref.cs.
using TinyLlama.Autograd;
using TinyLlama.Quantization;

namespace TinyLlama.Tensors;

public static partial class Functional
{
    /// <summary>x [..., in] (f32 or f64) @ W^T with W [out, in] given as Q4_0 blocks weightQ4 [out, in / 32 * 18].</summary>
    public static Tensor LinearQ4(Tensor x, Tensor weightQ4)
    {
        const string op = "linear_q4";
        var (outF, inF) = Quantize.CheckQ4Weight(weightQ4, op);
        if (x.Rank < 1 || x.shape[^1] != inF)
            throw new ArgumentException($"{op}: x {Shapes.Format(x.shape)} does not end in the weights' {inF} input features");
        if (x.DType is not (DType.F32 or DType.F64))
            throw new ArgumentException($"{op}: x must be f32 or f64, got {x.DType.Name()}");
        if (weightQ4.Device != x.Device)
            throw new ArgumentException($"{op}: x is on {x.Device} but the weights are on {weightQ4.Device}");
        int n = x.Numel / inF;
        var x2 = x.Detach().Reshape(n, inF).Contiguous();                // (N, in)
        var y = Tensor.Zeros([n, outF], x.DType, x.Device);              // (N, out)
        y.Backend.MatMulQ4(x2, weightQ4, y);
        var outShape = x.shape[..^1].Append(outF).ToArray();
        return Engine.Record(y.Reshape(outShape), "LinearQ4Backward", [x], dy =>
        {
            var w = Quantize.DequantizeQ4_0(weightQ4, x.DType);          // (out, in), dropped after the product
            return [Tensor.MatMul(dy.Reshape(n, outF), w).Reshape(x.shape)];
        });
    }
}
