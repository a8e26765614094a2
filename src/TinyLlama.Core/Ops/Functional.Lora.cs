// Fused LoRA linear (Hu et al., 2021, eq. 3; PEFT's LoraLayer): y = x W^T + s (xd A^T) B^T with
// xd = dropout(x) on the adapter's branch only and s = alpha / r. "Fused": one autograd node; the merged
// weight W + s B A is never formed, and neither is a second [N, out] product: from u = xd A^T [N, r], the
// backend writes y = x W^T + s u B^T in one product (IBackend.LowRankMatMul: on the ILGPU backend one
// tiled kernel with the rank-r term as extra K steps, kernels/LoraLinear.cs).
// Backward, with dy [N, out], g = s dy B [N, r]:
//   dx  = dy W            (main path; W frozen so there is no dW unless W requires grad: dW = dy^T x)
//   dxd = g A             (the adapter's input; the dropout node, if any, carries it on to x)
//   dA  = g^T xd          [r, in]
//   dB  = s dy^T u        [out, r]
// Naive definition: Ops/Reference/LoraRef.cs.
using TinyLlama.Autograd;

namespace TinyLlama.Tensors;

public static partial class Functional
{
    /// <summary>
    /// x [..., in] W^T + scale * (xLora [..., in] A^T) B^T with weight [out, in], loraA [r, in], loraB [out, r],
    /// all one float dtype (f32 or f64). xLora is x itself, or dropout(x) for adapter dropout.
    /// </summary>
    public static Tensor LoraLinear(Tensor x, Tensor xLora, Tensor weight, Tensor loraA, Tensor loraB, double scale)
    {
        const string op = "lora_linear";
        int inF = weight.Size(1), outF = weight.Size(0), r = loraA.Size(0);
        if (x.Rank < 1 || x.shape[^1] != inF || !x.shape.AsSpan().SequenceEqual(xLora.shape) || loraA.Rank != 2 || loraA.Size(1) != inF || loraB.Rank != 2 || loraB.Size(0) != outF || loraB.Size(1) != r)
            throw new ArgumentException($"{op}: x {Shapes.Format(x.shape)}, weight {Shapes.Format(weight.shape)}, A {Shapes.Format(loraA.shape)}, B {Shapes.Format(loraB.shape)} are not x [..., in], W [out, in], A [r, in], B [out, r]");
        if (x.DType is not (DType.F32 or DType.F64) || xLora.DType != x.DType || weight.DType != x.DType || loraA.DType != x.DType || loraB.DType != x.DType)
            throw new ArgumentException($"{op}: expected one f32 or f64 dtype, got x {x.DType.Name()}, W {weight.DType.Name()}, A {loraA.DType.Name()}, B {loraB.DType.Name()}");
        int n = x.Numel / Math.Max(inF, 1);
        var x2 = x.Detach().Reshape(n, inF);          // (N, in)
        var xd2 = xLora.Detach().Reshape(n, inF);     // (N, in)
        Tensor u;
        using (GradMode.NoGrad())
            u = Tensor.MatMul(xd2, loraA.Detach().MT).Contiguous();       // (N, r)
        var y = Tensor.Zeros([n, outF], x.DType, x.Device);              // (N, out)
        y.Backend.LowRankMatMul(x2, weight.Detach().MT, u, loraB.Detach().MT, scale, y); // y = x W^T + s u B^T
        var outShape = x.shape[..^1].Append(outF).ToArray();
        return Engine.Record(y.Reshape(outShape), "LoraLinearBackward", [x, xLora, weight, loraA, loraB], dy =>
        {
            var dy2 = dy.Reshape(n, outF);
            // g = s dy B (N, r) is needed only by the adapter input and A.
            var g = xLora.RequiresGrad || loraA.RequiresGrad ? Tensor.MatMul(dy2, loraB.Detach()) * scale : null;
            return [
                x.RequiresGrad ? Tensor.MatMul(dy2, weight.Detach()).Reshape(x.shape) : null,
                xLora.RequiresGrad ? Tensor.MatMul(g!, loraA.Detach()).Reshape(x.shape) : null,
                weight.RequiresGrad ? Tensor.MatMul(dy2.MT, x2) : null,
                loraA.RequiresGrad ? Tensor.MatMul(g!.MT, xd2) : null,
                loraB.RequiresGrad ? Tensor.MatMul(dy2.MT, u) * scale : null,
            ];
        });
    }
}
