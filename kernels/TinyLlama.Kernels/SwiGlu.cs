// SwiGLU (Shazeer, 2020), LLaMA's feed-forward gate. Math: Backends/Cpu/CpuBackend.SwiGlu.cs, with
// s = sigmoid(g):  y = silu(gate) up = (s g) up;  dGate = dy up s (1 + g (1 - s));  dUp = dy s g.
// The operations are ordered as the CPU's so f32 results agree to rounding.
//
// Tiling: one thread per element (contiguous operands). Traffic: forward 2 reads and 1 write per
// element; backward 3 reads and 2 writes.
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>SwiGLU kernels.</summary>
public static class SwiGluKernels
{
    /// <summary>y[i] = silu(gate[i]) up[i].</summary>
    public static void SwiGluForwardKernel<T>(Index1D i, ArrayView<T> gate, ArrayView<T> up, ArrayView<T> y) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T g = gate[i];
        T s = T.One / (T.One + T.Exp(-g));
        y[i] = s * g * up[i];
    }

    /// <summary>dGate[i] and dUp[i] from dy[i].</summary>
    public static void SwiGluBackwardKernel<T>(Index1D i, ArrayView<T> gate, ArrayView<T> up, ArrayView<T> dy, ArrayView<T> dGate, ArrayView<T> dUp)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T g = gate[i], gy = dy[i];
        T s = T.One / (T.One + T.Exp(-g));
        T siluGrad = (g * (T.One - s) + T.One) * s;
        dGate[i] = siluGrad * up[i] * gy;
        dUp[i] = s * g * gy;
    }
}
