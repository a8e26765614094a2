// RMSNorm (Zhang and Sennrich, "Root Mean Square Layer Normalization", 2019), LLaMA's normalisation:
// y = x / sqrt(mean(x^2) + eps) * weight over the last dim. Fused: one pass per row forward, the saved
// rstd = 1 / sqrt(mean(x^2) + eps) reused by the hand-written backward (CpuBackend.RmsNorm.cs holds the
// math; Ops/Reference/RmsNormRef.cs the naive definition). Also the checks shared by the fused ops.
using TinyLlama.Autograd;

namespace TinyLlama.Tensors;

public static partial class Functional
{
    /// <summary>
    /// RMSNorm over the last dim of x [..., C] with a weight [C]: y = x * rstd * weight,
    /// rstd = 1 / sqrt(mean(x^2) + eps). 16-bit inputs are computed in f32 and the result rounded back.
    /// </summary>
    public static Tensor RmsNorm(Tensor x, Tensor weight, double eps = 1e-5)
    {
        const string op = "rms_norm";
        CheckFloatInputs(op, x, weight);
        if (x.Rank < 1 || weight.Rank != 1 || weight.shape[0] != x.shape[^1])
            throw new ArgumentException($"{op}: x {Shapes.Format(x.shape)} needs a weight of shape [{(x.Rank < 1 ? "C" : x.shape[^1])}], got {Shapes.Format(weight.shape)}");
        if (!(eps >= 0) || double.IsInfinity(eps)) throw new ArgumentException($"{op}: eps must be finite and non-negative, got {eps}");
        int c = x.shape[^1], n = Shapes.Numel(x.shape.AsSpan(0, x.Rank - 1));
        var ct = FusedComputeType(x.DType);
        // xc is (N, C), wc is (C); both stay alive in the closure for the backward.
        var xc = x.Detach().CastRaw(ct).Contiguous().Reshape(n, c);
        var wc = weight.Detach().CastRaw(ct).Contiguous();
        var y = Tensor.Zeros([n, c], ct, x.Device);
        var rstd = Tensor.Zeros([n], ct, x.Device);
        x.Backend.RmsNorm(xc, wc, eps, y, rstd);
        var result = y.Reshape(x.shape).CastRaw(x.DType);
        return Engine.Record(result, "RmsNormBackward", [x, weight], g =>
        {
            var dy = g.CastRaw(ct).Contiguous().Reshape(n, c);
            var dx = Tensor.Zeros([n, c], ct, g.Device);
            var dWeight = Tensor.Zeros([c], ct, g.Device);
            g.Backend.RmsNormBackward(dy, xc, wc, rstd, dx, dWeight);
            return [x.RequiresGrad ? dx.Reshape(x.shape).CastRaw(x.DType) : null,
                    weight.RequiresGrad ? dWeight.CastRaw(weight.DType) : null];
        });
    }

    // ---------------- checks shared by the fused ops (Functional.*.cs) ----------------

    /// <summary>The dtype a fused op computes in: f32 for the 16-bit storage types, else the dtype itself.</summary>
    private static DType FusedComputeType(DType t) => t.IsHalf() ? DType.F32 : t;

    /// <summary>All inputs floating-point, of one dtype, on one device; otherwise a one-line error naming the op.</summary>
    private static void CheckFloatInputs(string op, params Tensor[] inputs)
    {
        var first = inputs[0];
        foreach (var t in inputs)
        {
            if (!t.DType.IsFloat())
                throw new ArgumentException($"{op}: expected floating-point tensors, got {t.DType.Name()} of shape {Shapes.Format(t.shape)}");
            if (t.DType != first.DType)
                throw new ArgumentException($"{op}: dtype mismatch, {first.DType.Name()} and {t.DType.Name()}; convert one with To()");
            if (t.Device != first.Device)
                throw new ArgumentException($"{op}: tensors on different devices, {first.Device} and {t.Device}");
        }
    }
}
