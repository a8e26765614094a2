// Rotary position embedding (Su et al., RoFormer, 2021). Math: Backends/Cpu/CpuBackend.Rope.cs: each pair
// (x1, x2) of a head at position t becomes (x1 cos - x2 sin, x1 sin + x2 cos) with cos/sin [T, D/2];
// the pair is (i, i + D/2) for RotateHalf and (2i, 2i + 1) for Interleaved; the inverse rotation (the
// backward) negates sin, passed in as sign = -1.
//
// Tiling: one thread per pair of x [B, T, H, D] (B T H D/2 threads). Traffic: 2 reads and 2 writes per pair,
// plus one cos and one sin read (shared by the H heads and B batches of a position, so cached).
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>RoPE kernel (forward; inverse = backward).</summary>
public static class RopeKernels
{
    /// <summary>Rotates pair i of x (i = ((b T + t) H + h) D/2 + p) into y.</summary>
    public static void RopeForwardKernel<T>(Index1D i, ArrayView<T> x, ArrayView<T> cos, ArrayView<T> sin, int t, int h, int d, int interleaved, T sign, ArrayView<T> y)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int half = d / 2;
        int row = i / half, p = i - row * half;       // row = (b T + t) H + h
        int position = row / h % t;
        T c = cos[position * half + p], s = sign * sin[position * half + p];
        int i1 = interleaved != 0 ? row * d + 2 * p : row * d + p;
        int i2 = interleaved != 0 ? i1 + 1 : i1 + half;
        T x1 = x[i1], x2 = x[i2];
        y[i1] = x1 * c - x2 * s;
        y[i2] = x1 * s + x2 * c;
    }
}
