// Naive rotary embedding: the definition the fast path (Backends/Cpu/CpuBackend.Rope.cs) is tested against.
// Math: Su et al., "RoFormer", 2021: the pair (x1, x2) at position t becomes
// (x1 cos - x2 sin, x1 sin + x2 cos) with the angle of pair i at t; the pairs are (i, i + D/2) for
// RotateHalf and (2i, 2i + 1) for Interleaved.
using TinyLlama.Backends;

namespace TinyLlama.Ops.Reference;

/// <summary>Reference RoPE over a dense (B, T, H, D) array, in double precision.</summary>
public static class RopeRef
{
    /// <summary>y = x rotated pairwise by the angles whose cos/sin are given; by -angle when inverse.</summary>
    public static void Forward(double[] x, int b, int t, int h, int d, double[] cos, double[] sin, RopeLayout layout, bool inverse, double[] y)
    {
        // x is (B, T, H, D); cos is (T, D/2); sin is (T, D/2); y is (B, T, H, D), written
        int half = d / 2;
        for (int bi = 0; bi < b; bi++)
            for (int ti = 0; ti < t; ti++)
                for (int hi = 0; hi < h; hi++)
                {
                    int row = ((bi * t + ti) * h + hi) * d;
                    for (int i = 0; i < half; i++)
                    {
                        int i1 = layout == RopeLayout.RotateHalf ? i : 2 * i;
                        int i2 = layout == RopeLayout.RotateHalf ? i + half : 2 * i + 1;
                        double c = cos[ti * half + i];
                        double s = inverse ? -sin[ti * half + i] : sin[ti * half + i];
                        double x1 = x[row + i1], x2 = x[row + i2];
                        y[row + i1] = x1 * c - x2 * s;
                        y[row + i2] = x1 * s + x2 * c;
                    }
                }
    }
}
