// The fused LLaMA ops on the ILGPU backend: RMSNorm, RoPE, SwiGLU and the LoRA term, forward and backward
// (kernels/TinyLlama.Kernels/RmsNorm.cs, Rope.cs, SwiGlu.cs, LoraLinear.cs). Shapes as IBackend documents them.
using System.Numerics;
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

public sealed partial class IlgpuBackend
{
    /// <summary>Upper bound on RMSNorm dWeight partial rows (the CPU backend's constant, so both split rows alike).</summary>
    private const int RmsNormMaxChunks = 64;

    public void RmsNorm(Tensor x, Tensor weight, double eps, Tensor y, Tensor rstd)
    {
        CheckFloat(x, "rms_norm");
        CheckSameDType("rms_norm", x, weight, y, rstd);
        if (x.Rank != 2) throw new ArgumentException($"rms_norm: x must be [N, C], got {Shapes.Format(x.Shape)}");
        int n = x.Size(0), c = x.Size(1);
        CheckShape("rms_norm", weight, c);
        CheckShape("rms_norm", y, n, c);
        CheckShape("rms_norm", rstd, n);
        lock (gate)
        {
            var w = Contiguous(weight);
            if (x.DType == DType.F32) RmsNormTyped<float>(x, w, (float)eps, y, rstd, n, c);
            else RmsNormTyped<double>(x, w, eps, y, rstd, n, c);
        }
    }

    private void RmsNormTyped<T>(Tensor x, Tensor w, T eps, Tensor y, Tensor rstd, int n, int c) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var xv = Dense<T>(x, "rms_norm");
        var wv = Dense<T>(w, "rms_norm");
        var yv = Dense<T>(y, "rms_norm");
        var rv = Dense<T>(rstd, "rms_norm");
        if (n == 0) return;
        T invC = T.One / T.CreateChecked(Math.Max(c, 1));
        Auto(RmsNormKernels.RmsNormForwardKernel<T>, accelerator.LoadStreamKernel)(Rows(n), xv, wv, c, eps, invC, yv, rv);
    }

    public void RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor dx, Tensor dWeight)
    {
        CheckFloat(x, "rms_norm backward");
        CheckSameDType("rms_norm backward", x, dy, weight, rstd, dx, dWeight);
        if (x.Rank != 2) throw new ArgumentException($"rms_norm backward: x must be [N, C], got {Shapes.Format(x.Shape)}");
        int n = x.Size(0), c = x.Size(1);
        CheckShape("rms_norm backward", dy, n, c);
        CheckShape("rms_norm backward", dx, n, c);
        CheckShape("rms_norm backward", weight, c);
        CheckShape("rms_norm backward", dWeight, c);
        CheckShape("rms_norm backward", rstd, n);
        lock (gate)
        {
            var w = Contiguous(weight);
            if (x.DType == DType.F32) RmsNormBackwardTyped<float>(dy, x, w, rstd, dx, dWeight, n, c);
            else RmsNormBackwardTyped<double>(dy, x, w, rstd, dx, dWeight, n, c);
        }
    }

    private void RmsNormBackwardTyped<T>(Tensor dy, Tensor x, Tensor w, Tensor rstd, Tensor dx, Tensor dWeight, int n, int c)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        const string op = "rms_norm backward";
        var gv = Dense<T>(dy, op);
        var xv = Dense<T>(x, op);
        var wv = Dense<T>(w, op);
        var rv = Dense<T>(rstd, op);
        var dv = Dense<T>(dx, op);
        var dwv = Dense<T>(dWeight, op);
        if (c == 0) return;
        if (n == 0)
        {
            Fill(dWeight, 0);
            return;
        }
        T invC = T.One / T.CreateChecked(c);
        Auto(RmsNormKernels.RmsNormBackwardKernel<T>, accelerator.LoadStreamKernel)(Rows(n), gv, xv, wv, rv, c, invC, dv);
        // dWeight: per-chunk partial rows, then an ordered sum (deterministic).
        int chunks = (int)Math.Clamp((long)n * c / 16384, 1, Math.Min(n, RmsNormMaxChunks));
        using var partial = (IlgpuStorage)Allocate(dWeight.DType, chunks * c);
        var pv = partial.View<T>();
        Auto(RmsNormKernels.RmsNormWeightBackwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(chunks * c, gv, xv, rv, n, c, chunks, pv);
        Auto(RmsNormKernels.RmsNormWeightReduceKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(c, pv, c, chunks, dwv);
    }

    public void Rope(Tensor x, Tensor cos, Tensor sin, RopeLayout layout, bool inverse, Tensor y)
    {
        CheckFloat(x, "rope");
        CheckSameDType("rope", x, cos, sin, y);
        if (x.Rank != 4 || x.Size(3) % 2 != 0) throw new ArgumentException($"rope: x must be [B, T, H, D] with D even, got {Shapes.Format(x.Shape)}");
        int b = x.Size(0), t = x.Size(1), h = x.Size(2), d = x.Size(3);
        CheckShape("rope", cos, t, d / 2);
        CheckShape("rope", sin, t, d / 2);
        CheckShape("rope", y, x.Shape);
        lock (gate)
        {
            var c = Contiguous(cos);
            var s = Contiguous(sin);
            if (x.DType == DType.F32) RopeTyped(x, c, s, layout, inverse ? -1f : 1f, y, b, t, h, d);
            else RopeTyped(x, c, s, layout, inverse ? -1.0 : 1.0, y, b, t, h, d);
        }
    }

    private void RopeTyped<T>(Tensor x, Tensor cos, Tensor sin, RopeLayout layout, T sign, Tensor y, int b, int t, int h, int d)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var xv = Dense<T>(x, "rope");
        var cv = Dense<T>(cos, "rope");
        var sv = Dense<T>(sin, "rope");
        var yv = Dense<T>(y, "rope");
        long pairs = (long)b * t * h * (d / 2);
        if (pairs == 0) return;
        Auto(RopeKernels.RopeForwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(
            (int)pairs, xv, cv, sv, t, h, d, layout == RopeLayout.Interleaved ? 1 : 0, sign, yv);
    }

    public void SwiGlu(Tensor gate, Tensor up, Tensor y)
    {
        CheckFloat(gate, "swiglu");
        CheckSameDType("swiglu", gate, up, y);
        CheckShape("swiglu", up, gate.Shape);
        CheckShape("swiglu", y, gate.Shape);
        lock (this.gate)
        {
            if (gate.DType == DType.F32) SwiGluTyped<float>(gate, up, y);
            else SwiGluTyped<double>(gate, up, y);
        }
    }

    private void SwiGluTyped<T>(Tensor gate, Tensor up, Tensor y) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var gv = Dense<T>(gate, "swiglu");
        var uv = Dense<T>(up, "swiglu");
        var yv = Dense<T>(y, "swiglu");
        if (y.Numel == 0) return;
        Auto(SwiGluKernels.SwiGluForwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(y.Numel, gv, uv, yv);
    }

    public void SwiGluBackward(Tensor gate, Tensor up, Tensor dy, Tensor dGate, Tensor dUp)
    {
        CheckFloat(gate, "swiglu backward");
        CheckSameDType("swiglu backward", gate, up, dy, dGate, dUp);
        foreach (var t in new[] { up, dy, dGate, dUp }) CheckShape("swiglu backward", t, gate.Shape);
        lock (this.gate)
        {
            if (gate.DType == DType.F32) SwiGluBackwardTyped<float>(gate, up, dy, dGate, dUp);
            else SwiGluBackwardTyped<double>(gate, up, dy, dGate, dUp);
        }
    }

    private void SwiGluBackwardTyped<T>(Tensor gate, Tensor up, Tensor dy, Tensor dGate, Tensor dUp) where T : unmanaged, IFloatingPointIeee754<T>
    {
        const string op = "swiglu backward";
        var gv = Dense<T>(gate, op);
        var uv = Dense<T>(up, op);
        var dyv = Dense<T>(dy, op);
        var dgv = Dense<T>(dGate, op);
        var duv = Dense<T>(dUp, op);
        if (dy.Numel == 0) return;
        Auto(SwiGluKernels.SwiGluBackwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(dy.Numel, gv, uv, dyv, dgv, duv);
    }

    // ---------------- LoRA (kernels/TinyLlama.Kernels/LoraLinear.cs) ----------------

    public void LowRankMatMul(Tensor a, Tensor b, Tensor u, Tensor v, double scale, Tensor c, Tensor? mask = null)
    {
        const string op = "lora";
        CheckFloat(c, op);
        CheckSameDType(op, a, b, u, v, c);
        if (mask is not null) CheckSameDType(op, c, mask);
        Functional.CheckLowRankMatMul(a, b, u, v, c, mask);
        var shape = new LoraShape
        {
            M = c.Size(0), N = c.Size(1), K = a.Size(1), R = u.Size(1),
            ARowStride = a.Strides[0], AColStride = a.Strides[1], BRowStride = b.Strides[0], BColStride = b.Strides[1],
            URowStride = u.Strides[0], UColStride = u.Strides[1], VRowStride = v.Strides[0], VColStride = v.Strides[1],
            HasMask = mask is null ? 0 : 1,
        };
        lock (gate)
        {
            CheckDense(c, op);
            if (c.DType == DType.F32) LowRankMatMulTyped(a, b, u, v, (float)scale, c, mask, shape);
            else LowRankMatMulTyped(a, b, u, v, scale, c, mask, shape);
        }
    }

    // Views start at each operand's first element (its offset), so the kernel's indices are relative.
    private void LowRankMatMulTyped<T>(Tensor a, Tensor b, Tensor u, Tensor v, T scale, Tensor c, Tensor? mask, LoraShape shape)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        const string op = "lora";
        ArrayView<T> From(Tensor t) => Whole<T>(t, op).SubView(t.Offset);
        var (av, bv, uv, vv, cv) = (From(a), From(b), From(u), From(v), Dense<T>(c, op));
        var mv = mask is null ? cv : Dense<T>(mask, op);   // read only when shape.HasMask is 1
        LoraLinearKernels.Validate(shape, av.Length, bv.Length, uv.Length, vv.Length, mv.Length, cv.Length);
        if (c.Numel == 0) return;
        if (typeof(T) == typeof(float) && SupportsTiledKernels)
        {
            var args = new LoraLinearArgs(shape, float.CreateTruncating(scale), av.Cast<float>(), bv.Cast<float>(), uv.Cast<float>(), vv.Cast<float>(), mv.Cast<float>(), cv.Cast<float>());
            LoraLinearKernels.Launch(accelerator, Stream, args, LoraVersion.Tiled);
            return;
        }
        Auto(LoraLinearKernels.LoraLinearForwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(c.Numel, av, bv, uv, vv, mv, scale, cv, shape);
    }
}
