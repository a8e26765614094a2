// Optimizer support on the ILGPU backend: the fused AdamW step (kernels/TinyLlama.Kernels/AdamW.cs).
// The sum of squares for gradient clipping lives with the reductions (IlgpuBackend.Reduce.cs).
using System.Numerics;
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

public sealed partial class IlgpuBackend
{
    public void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, int step)
    {
        if (param.DType is not (DType.F32 or DType.F64))
            throw new NotSupportedException($"adamw: parameters must be f32 or f64 (master weights), got {param.DType.Name()}");
        foreach (var (t, name) in new[] { (grad, "grad"), (m, "m"), (v, "v") })
        {
            if (t.DType != param.DType)
                throw new ArgumentException($"adamw: {name} is {t.DType.Name()} but the parameter is {param.DType.Name()}");
            CheckShape("adamw", t, param.Shape);
        }
        if (step < 1) throw new ArgumentException($"adamw: step must be 1 or more (the bias corrections use it), got {step}");
        lock (gate)
        {
            if (param.DType == DType.F32) AdamWTyped<float>(param, grad, m, v, lr, beta1, beta2, eps, weightDecay, step);
            else AdamWTyped<double>(param, grad, m, v, lr, beta1, beta2, eps, weightDecay, step);
        }
    }

    private void AdamWTyped<T>(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, int step)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        const string op = "adamw";
        var pv = Dense<T>(param, op);
        var gv = Dense<T>(grad, op);
        var mv = Dense<T>(m, op);
        var vv = Dense<T>(v, op);
        if (param.Numel == 0) return;
        // Constants in double, rounded once to T, exactly as the CPU backend computes them.
        var k = new AdamWConstants<T>
        {
            Beta1 = T.CreateChecked(beta1), OneMinusBeta1 = T.CreateChecked(1 - beta1),
            Beta2 = T.CreateChecked(beta2), OneMinusBeta2 = T.CreateChecked(1 - beta2),
            Decay = T.CreateChecked(1 - lr * weightDecay),
            BiasCorrection1 = T.CreateChecked(1 - Math.Pow(beta1, step)), BiasCorrection2 = T.CreateChecked(1 - Math.Pow(beta2, step)),
            Eps = T.CreateChecked(eps), Lr = T.CreateChecked(lr),
        };
        Auto(AdamWKernels.AdamWStepKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(param.Numel, pv, gv, mv, vv, k);
    }
}
