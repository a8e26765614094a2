// Fused LoRA linear (Hu et al., 2021, eq. 3; PEFT's LoraLayer): y = x W^T + s (xd A^T) B^T with
// xd = dropout(x) on the adapter's branch only and s = alpha / r. "Fused": one autograd node; the merged
// weight W + s B A is never formed, and neither is a second [N, out] product: from u = xd A^T [N, r], the
// backend writes y = x W^T + s u B^T in one product (IBackend.LowRankMatMul: on the ILGPU backend one
// tiled kernel with the rank-r term as extra K steps, kernels/LoraLinear.cs).
// Backward, with dy [N, out], g = s dy B [N, r]:
//   dx  = dy W            (main path; W frozen so there is no dW unless W requires grad: dW = dy^T x)
//   dxd = g A             (the adapter's input; the dropout node, if any, carries it on to x)
// When the adapter's input is x itself or x * mask (the layer's form: dropout's scaled keep-mask given to
// the op instead of a separate Dropout node), the two paths meet in one product with a rank-r term:
//   dx  = dy W + mask * (g A)      (IBackend.LowRankMatMul with the mask; on ILGPU one kernel)
// which is what PyTorch computes as two GEMMs, a dropout backward and an add.
//   dA  = g^T xd          [r, in]
//   dB  = s dy^T u        [out, r]
// Naive definition: Ops/Reference/LoraRef.cs.
using TinyLlama.Autograd;

namespace TinyLlama.Tensors;

public static partial class Functional
{
    /// <summary>
    /// x [..., in] W^T + scale * (xLora [..., in] A^T) B^T with weight [out, in], loraA [r, in], loraB [out, r],
    /// all one float dtype (f32 or f64). xLora is any tensor of x's shape (x itself, or dropout(x) built by
    /// the caller); gradients flow to both.
    /// </summary>
    public static Tensor LoraLinear(Tensor x, Tensor xLora, Tensor weight, Tensor loraA, Tensor loraB, double scale) =>
        ReferenceEquals(x, xLora) ? LoraLinear(x, weight, loraA, loraB, scale) : LoraLinearCore(x, xLora, null, weight, loraA, loraB, scale);

    /// <summary>
    /// The LoRA layer's form: x W^T + scale * ((x * dropoutMask) A^T) B^T, where dropoutMask (x's shape and
    /// dtype, 0 or 1 / (1 - p), as <see cref="DropoutMask"/> draws it) is null without dropout. One node:
    /// dx = dy W + mask * (scale dy B A) comes out of one product.
    /// </summary>
    public static Tensor LoraLinear(Tensor x, Tensor weight, Tensor loraA, Tensor loraB, double scale, Tensor? dropoutMask = null) =>
        LoraLinearCore(x, null, dropoutMask, weight, loraA, loraB, scale);

    /// <summary>
    /// The shapes IBackend.LowRankMatMul accepts, checked by every backend: a [M, K] @ b [K, N] + u [M, R] @ v [R, N]
    /// (* mask [M, N]) -> c [M, N]; throws a one-line error otherwise.
    /// </summary>
    public static void CheckLowRankMatMul(Tensor a, Tensor b, Tensor u, Tensor v, Tensor c, Tensor? mask)
    {
        if (a.Rank != 2 || b.Rank != 2 || u.Rank != 2 || v.Rank != 2 || c.Rank != 2 || a.shape[1] != b.shape[0] || u.shape[1] != v.shape[0]
            || c.shape[0] != a.shape[0] || c.shape[0] != u.shape[0] || c.shape[1] != b.shape[1] || c.shape[1] != v.shape[1]
            || (mask is not null && !mask.shape.AsSpan().SequenceEqual(c.shape)))
            throw new ArgumentException($"lora: a [M, K] @ b [K, N] + u [M, R] @ v [R, N] (* mask [M, N]) -> c [M, N] expected, got {Shapes.Format(a.shape)}, {Shapes.Format(b.shape)}, {Shapes.Format(u.shape)}, {Shapes.Format(v.shape)}, {(mask is null ? "" : Shapes.Format(mask.shape) + ", ")}{Shapes.Format(c.shape)}");
    }

    /// <summary>The op; the adapter reads xLora when given, else x (* mask).</summary>
    private static Tensor LoraLinearCore(Tensor x, Tensor? xLora, Tensor? mask, Tensor weight, Tensor loraA, Tensor loraB, double scale)
    {
        const string op = "lora_linear";
        if (weight.Rank != 2 || loraA.Rank != 2)
            throw new ArgumentException($"{op}: weight {Shapes.Format(weight.shape)} and A {Shapes.Format(loraA.shape)} must be matrices W [out, in] and A [r, in]");
        int inF = weight.Size(1), outF = weight.Size(0), r = loraA.Size(0);
        var side = xLora ?? mask;
        if (x.Rank < 1 || x.shape[^1] != inF || (side is not null && !x.shape.AsSpan().SequenceEqual(side.shape)) || loraA.Size(1) != inF || loraB.Rank != 2 || loraB.Size(0) != outF || loraB.Size(1) != r)
            throw new ArgumentException($"{op}: x {Shapes.Format(x.shape)}, {(xLora is not null ? "x_lora" : "mask")} {(side is null ? "-" : Shapes.Format(side.shape))}, weight {Shapes.Format(weight.shape)}, A {Shapes.Format(loraA.shape)}, B {Shapes.Format(loraB.shape)} are not x [..., in] (x_lora or mask alike), W [out, in], A [r, in], B [out, r]");
        if (x.DType is not (DType.F32 or DType.F64) || (side is not null && side.DType != x.DType) || weight.DType != x.DType || loraA.DType != x.DType || loraB.DType != x.DType)
            throw new ArgumentException($"{op}: expected one f32 or f64 dtype, got x {x.DType.Name()}, W {weight.DType.Name()}, A {loraA.DType.Name()}, B {loraB.DType.Name()}{(side is null ? "" : $", {(xLora is not null ? "x_lora" : "mask")} {side.DType.Name()}")}");
        int n = x.Numel / Math.Max(inF, 1);
        var x2 = x.Detach().Reshape(n, inF);                                                      // (N, in)
        var mask2 = mask?.Detach().Reshape(n, inF).Contiguous();                                   // (N, in) or null
        Tensor xd2, u;                                                                             // (N, in), (N, r)
        using (GradMode.NoGrad())
        {
            xd2 = xLora is not null ? xLora.Detach().Reshape(n, inF)
                : mask2 is not null ? Tensor.BinaryRaw(Backends.BinaryOp.Mul, x2, mask2)         // dropout(x), as Functional.Dropout computes it
                : x2;
            u = Tensor.MatMul(xd2, loraA.Detach().MT).Contiguous();
        }
        var y = Tensor.Zeros([n, outF], x.DType, x.Device);                                       // (N, out)
        y.Backend.LowRankMatMul(x2, weight.Detach().MT, u, loraB.Detach().MT, scale, y);          // y = x W^T + s u B^T
        var outShape = x.shape[..^1].Append(outF).ToArray();
        Tensor[] inputs = xLora is not null ? [x, xLora, weight, loraA, loraB] : [x, weight, loraA, loraB];
        return Engine.Record(y.Reshape(outShape), "LoraLinearBackward", inputs, dy =>
        {
            var dy2 = dy.Reshape(n, outF);
            bool adapterInputGrad = xLora?.RequiresGrad ?? x.RequiresGrad;
            // g = s dy B (N, r) is needed only by the adapter input and A.
            var g = adapterInputGrad || loraA.RequiresGrad ? Tensor.MatMul(dy2, loraB.Detach()) * scale : null;
            var dW = weight.RequiresGrad ? Tensor.MatMul(dy2.MT, x2) : null;
            var dA = loraA.RequiresGrad ? Tensor.MatMul(g!.MT, xd2) : null;
            var dB = loraB.RequiresGrad ? Tensor.MatMul(dy2.MT, u) * scale : null;
            if (xLora is not null)
                return [
                    x.RequiresGrad ? Tensor.MatMul(dy2, weight.Detach()).Reshape(x.shape) : null,
                    xLora.RequiresGrad ? Tensor.MatMul(g!, loraA.Detach()).Reshape(x.shape) : null,
                    dW, dA, dB,
                ];
            Tensor? dx = null;
            if (x.RequiresGrad)
            {
                // Both paths meet in one product: dx = dy W + mask * (g A).
                dx = Tensor.Zeros([n, inF], x.DType, x.Device);
                dx.Backend.LowRankMatMul(dy2.Contiguous(), weight.Detach(), g!.Contiguous(), loraA.Detach(), 1.0, dx, mask2);
                dx = dx.Reshape(x.shape);
            }
            return [dx, dW, dA, dB];
        });
    }
}
