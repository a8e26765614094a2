// Fused AdamW step (Loshchilov and Hutter, "Decoupled Weight Decay Regularization", 2019), as
// torch.optim.AdamW and Optim/AdamW.cs:
//   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
//   p <- p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// The host computes the step constants in double (bias corrections from t) and passes them in the
// parameter's type; the operations are ordered as Optim/AdamW.cs orders its tensor ops.
//
// Tiling: one thread per parameter element (all four tensors contiguous). Traffic: 4 reads (p, g, m, v)
// and 3 writes (p, m, v) per element, one pass instead of the ~10 elementwise launches of the unfused step.
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Step constants of one AdamW update, in the parameter's type.</summary>
public struct AdamWConstants<T> where T : unmanaged
{
    public T Beta1, OneMinusBeta1, Beta2, OneMinusBeta2, Decay, BiasCorrection1, BiasCorrection2, Eps, Lr;
}

/// <summary>AdamW kernel.</summary>
public static class AdamWKernels
{
    /// <summary>Updates element i of param, m and v in place from grad.</summary>
    public static void AdamWStepKernel<T>(Index1D i, ArrayView<T> param, ArrayView<T> grad, ArrayView<T> m, ArrayView<T> v, AdamWConstants<T> k)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T g = grad[i];
        T mi = m[i] * k.Beta1 + g * k.OneMinusBeta1;
        T vi = v[i] * k.Beta2 + g * g * k.OneMinusBeta2;
        m[i] = mi;
        v[i] = vi;
        T update = mi / k.BiasCorrection1 / (T.Sqrt(vi / k.BiasCorrection2) + k.Eps) * k.Lr;
        param[i] = param[i] * k.Decay - update;
    }
}
