// SwiGLU on the CPU (Shazeer, "GLU Variants Improve Transformer", 2020; LLaMA's feed-forward gate).
// Reference: Ops/Reference/SwiGluRef.cs. Autograd wrapper: Ops/Functional.SwiGlu.cs.
//
// With s = sigmoid(g) and silu(g) = g s:
//   y     = silu(gate) * up
//   dGate = dy * up * silu'(gate),  silu'(g) = s (1 + g (1 - s))
//   dUp   = dy * silu(gate)
// The elements are cut into blocks that stay in L1 while several TensorPrimitives passes run over them.
using System.Numerics;
using System.Numerics.Tensors;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>Elements per SwiGLU work item: 4 KiB of f32 per operand, so all operands fit in L1.</summary>
    private const int SwiGluBlock = 1024;

    public void SwiGlu(Tensor gate, Tensor up, Tensor y)
    {
        CheckFloat(gate, "swiglu");
        if (gate.DType == DType.F32) SwiGluTyped<float>(gate, up, y);
        else SwiGluTyped<double>(gate, up, y);
    }

    private static void SwiGluTyped<T>(Tensor gate, Tensor up, Tensor y) where T : unmanaged, IFloatingPointIeee754<T>
    {
        // gate, up and y are (N) (any shape, contiguous)
        int n = y.Numel, blocks = (n + SwiGluBlock - 1) / SwiGluBlock;
        CpuParallel.For(blocks, 4L * SwiGluBlock, (start, end) =>
        {
            var gs = Span<T>(gate);
            var us = Span<T>(up);
            var ys = Span<T>(y);
            for (int blk = start; blk < end; blk++)
            {
                int o = blk * SwiGluBlock, len = Math.Min(SwiGluBlock, n - o);
                var g = gs.Slice(o, len);
                var yb = ys.Slice(o, len);
                TensorPrimitives.Sigmoid<T>(g, yb);
                TensorPrimitives.Multiply<T>(yb, g, yb);
                TensorPrimitives.Multiply<T>(yb, us.Slice(o, len), yb);
            }
        });
    }

    public void SwiGluBackward(Tensor gate, Tensor up, Tensor dy, Tensor dGate, Tensor dUp)
    {
        CheckFloat(gate, "swiglu backward");
        if (gate.DType == DType.F32) SwiGluBackwardTyped<float>(gate, up, dy, dGate, dUp);
        else SwiGluBackwardTyped<double>(gate, up, dy, dGate, dUp);
    }

    private static void SwiGluBackwardTyped<T>(Tensor gate, Tensor up, Tensor dy, Tensor dGate, Tensor dUp)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        // gate, up, dy, dGate and dUp are (N) (any shape, contiguous)
        int n = dy.Numel, blocks = (n + SwiGluBlock - 1) / SwiGluBlock;
        CpuParallel.For(blocks, 8L * SwiGluBlock, (start, end) =>
        {
            var gs = Span<T>(gate);
            var us = Span<T>(up);
            var dys = Span<T>(dy);
            var dgs = Span<T>(dGate);
            var dus = Span<T>(dUp);
            for (int blk = start; blk < end; blk++)
            {
                int o = blk * SwiGluBlock, len = Math.Min(SwiGluBlock, n - o);
                var g = gs.Slice(o, len);
                var u = us.Slice(o, len);
                var gy = dys.Slice(o, len);
                var dg = dgs.Slice(o, len);
                var du = dus.Slice(o, len);
                TensorPrimitives.Sigmoid<T>(g, du);                        // du = s
                TensorPrimitives.Subtract<T>(T.One, du, dg);              // dg = 1 - s
                TensorPrimitives.MultiplyAdd<T>(g, dg, T.One, dg);        // dg = 1 + g (1 - s)
                TensorPrimitives.Multiply<T>(dg, du, dg);                 // dg = silu'(g)
                TensorPrimitives.Multiply<T>(dg, u, dg);
                TensorPrimitives.Multiply<T>(dg, gy, dg);                 // dg = dy * up * silu'(g)
                TensorPrimitives.Multiply<T>(du, g, du);                  // du = silu(g)
                TensorPrimitives.Multiply<T>(du, gy, du);                 // du = dy * silu(g)
            }
        });
    }
}
