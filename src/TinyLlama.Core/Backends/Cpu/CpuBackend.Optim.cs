// Optimizer support on the CPU: the fused AdamW step and the accumulated sum of squares (global gradient
// norm). Math: Optim/AdamW.cs (AdamW, Loshchilov and Hutter, 2019) and Optim/GradClip.cs; the ILGPU
// kernels (kernels/TinyLlama.Kernels/AdamW.cs, Reduce.cs) compute the same.
//
// AdamWStep runs the whole update in one pass per SIMD block instead of the ~10 tensor ops (and their
// temporaries) of the unfused step; the step constants are computed once in double and rounded to the
// parameter type, and the operations keep the order of Optim/AdamW.cs so both paths agree to rounding.
using System.Numerics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>Elements per AdamW work item: 4 KiB of f32 per operand, four operands in L1.</summary>
    private const int AdamWBlock = 1024;

    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, int step)
    {
        CheckAdamW(param, grad, m, v, step);
        if (param.DType == DType.F32) AdamWTyped<float>(param, grad, m, v, lr, beta1, beta2, eps, weightDecay, step);
        else AdamWTyped<double>(param, grad, m, v, lr, beta1, beta2, eps, weightDecay, step);
    }

    /// <summary>Dtypes, shapes and contiguity AdamWStep needs (the ILGPU backend checks the same).</summary>
    private static void CheckAdamW(Tensor param, Tensor grad, Tensor m, Tensor v, int step)
    {
        if (param.DType is not (DType.F32 or DType.F64))
            throw new NotSupportedException($"adamw: parameters must be f32 or f64 (master weights), got {param.DType.Name()}");
        foreach (var (t, name) in new[] { (grad, "grad"), (m, "m"), (v, "v") })
        {
            if (t.DType != param.DType)
                throw new ArgumentException($"adamw: {name} is {t.DType.Name()} but the parameter is {param.DType.Name()}");
            if (!t.Shape.AsSpan().SequenceEqual(param.Shape))
                throw new ArgumentException($"adamw: {name} has shape {Shapes.Format(t.Shape)}, the parameter {Shapes.Format(param.Shape)}");
            if (!t.IsContiguous) throw new ArgumentException($"adamw: {name} must be contiguous");
        }
        if (!param.IsContiguous) throw new ArgumentException("adamw: the parameter must be contiguous");
        if (step < 1) throw new ArgumentException($"adamw: step must be 1 or more (the bias corrections use it), got {step}");
    }

    private static void AdamWTyped<T>(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, int step)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        // param, grad, m, v are (N) (any shape, contiguous)
        T b1 = T.CreateChecked(beta1), c1 = T.CreateChecked(1 - beta1), b2 = T.CreateChecked(beta2), c2 = T.CreateChecked(1 - beta2);
        T decay = T.CreateChecked(1 - lr * weightDecay), lrT = T.CreateChecked(lr), epsT = T.CreateChecked(eps);
        T bc1 = T.CreateChecked(1 - Math.Pow(beta1, step)), bc2 = T.CreateChecked(1 - Math.Pow(beta2, step));
        int n = param.Numel, blocks = (n + AdamWBlock - 1) / AdamWBlock;
        CpuParallel.For(blocks, 8L * AdamWBlock, (start, end) =>
        {
            var ps = Span<T>(param);
            var gs = Span<T>(grad);
            var ms = Span<T>(m);
            var vs = Span<T>(v);
            for (int blk = start; blk < end; blk++)
            {
                int o = blk * AdamWBlock, len = Math.Min(AdamWBlock, n - o), i = 0;
                var p = ps.Slice(o, len);
                var g = gs.Slice(o, len);
                var mb = ms.Slice(o, len);
                var vb = vs.Slice(o, len);
                if (Vector256.IsHardwareAccelerated)
                {
                    ref T pr = ref MemoryMarshal.GetReference(p);
                    ref T gr = ref MemoryMarshal.GetReference(g);
                    ref T mr = ref MemoryMarshal.GetReference(mb);
                    ref T vr = ref MemoryMarshal.GetReference(vb);
                    for (; i <= len - Vector256<T>.Count; i += Vector256<T>.Count)
                    {
                        var gv = Vector256.LoadUnsafe(ref gr, (nuint)i);
                        var mv = Vector256.LoadUnsafe(ref mr, (nuint)i) * b1 + gv * c1;
                        var vv = Vector256.LoadUnsafe(ref vr, (nuint)i) * b2 + gv * gv * c2;
                        mv.StoreUnsafe(ref mr, (nuint)i);
                        vv.StoreUnsafe(ref vr, (nuint)i);
                        var update = mv / Vector256.Create(bc1) / (Vector256.Sqrt(vv / Vector256.Create(bc2)) + Vector256.Create(epsT)) * lrT;
                        (Vector256.LoadUnsafe(ref pr, (nuint)i) * decay - update).StoreUnsafe(ref pr, (nuint)i);
                    }
                }
                for (; i < len; i++)
                {
                    T gi = g[i];
                    T mi = mb[i] * b1 + gi * c1;
                    T vi = vb[i] * b2 + gi * gi * c2;
                    mb[i] = mi;
                    vb[i] = vi;
                    p[i] = p[i] * decay - mi / bc1 / (T.Sqrt(vi / bc2) + epsT) * lrT;
                }
            }
        });
    }

    public void SumOfSquares(Tensor x, Tensor result)
    {
        CheckFloat(x, "sum_of_squares");
        CheckSumOfSquaresResult(result);
        var plan = new RowPlan(x.shape, [x.strides], [x.Offset]);
        // Rows summed in parallel into per-item partials, then added in item order (deterministic).
        var partial = new double[plan.Items];
        var xs = Host(x);
        int sx = plan.InnerStrides[0];
        plan.Run(item =>
        {
            Span<int> o = stackalloc int[1];
            int n = plan.Locate(item, o);
            double acc = 0;
            if (x.DType == DType.F32)
            {
                var s = xs.AsSpan<float>();
                for (int i = 0, xi = o[0]; i < n; i++, xi += sx) acc += (double)s[xi] * s[xi];
            }
            else
            {
                var s = xs.AsSpan<double>();
                for (int i = 0, xi = o[0]; i < n; i++, xi += sx) acc += s[xi] * s[xi];
            }
            partial[item] = acc;
        });
        double total = 0;
        foreach (double p in partial) total += p;
        if (result.DType == DType.F32) Host(result).AsSpan<float>()[result.Offset] += (float)total;
        else Host(result).AsSpan<double>()[result.Offset] += total;
    }

    /// <summary>The result must be one f32 or f64 element.</summary>
    private static void CheckSumOfSquaresResult(Tensor result)
    {
        if (result.Numel != 1 || result.DType is not (DType.F32 or DType.F64))
            throw new ArgumentException($"sum_of_squares: result must be a one-element f32 or f64 tensor, got {result.DType.Name()} of shape {Shapes.Format(result.Shape)}");
    }
}
