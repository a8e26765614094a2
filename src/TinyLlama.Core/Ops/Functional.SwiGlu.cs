// SwiGLU (Shazeer, "GLU Variants Improve Transformer", 2020), the gate of LLaMA's feed-forward block:
// y = silu(gate) * up, with silu(g) = g sigmoid(g). Fused: one pass forward, one pass backward
// (dGate = dy * up * silu'(gate), dUp = dy * silu(gate)); the math is in CpuBackend.SwiGlu.cs and the naive
// definition in Ops/Reference/SwiGluRef.cs.
using TinyLlama.Autograd;

namespace TinyLlama.Tensors;

public static partial class Functional
{
    /// <summary>
    /// silu(gate) * up elementwise for two tensors of the same shape (no broadcasting), e.g. the outputs
    /// [..., FFN] of LLaMA's w1 and w3 projections. 16-bit inputs are computed in f32 and rounded back.
    /// </summary>
    public static Tensor SwiGlu(Tensor gate, Tensor up)
    {
        const string op = "swiglu";
        CheckFloatInputs(op, gate, up);
        if (!gate.shape.AsSpan().SequenceEqual(up.shape))
            throw new ArgumentException($"{op}: gate {Shapes.Format(gate.shape)} and up {Shapes.Format(up.shape)} must have the same shape");
        var ct = FusedComputeType(gate.DType);
        var g = gate.Detach().CastRaw(ct).Contiguous();
        var u = up.Detach().CastRaw(ct).Contiguous();
        var y = Tensor.Zeros(gate.shape, ct, gate.Device);
        gate.Backend.SwiGlu(g, u, y);
        return Engine.Record(y.CastRaw(gate.DType), "SwiGluBackward", [gate, up], dy =>
        {
            var dyc = dy.CastRaw(ct).Contiguous();
            var dGate = Tensor.Zeros(gate.shape, ct, dy.Device);
            var dUp = Tensor.Zeros(gate.shape, ct, dy.Device);
            dy.Backend.SwiGluBackward(g, u, dyc, dGate, dUp);
            return [gate.RequiresGrad ? dGate.CastRaw(gate.DType) : null, up.RequiresGrad ? dUp.CastRaw(up.DType) : null];
        });
    }
}
