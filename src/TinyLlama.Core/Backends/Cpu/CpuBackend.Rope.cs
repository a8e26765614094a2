// Rotary position embedding on the CPU (Su et al., "RoFormer: Enhanced Transformer with Rotary Position
// Embedding", 2021). Reference: Ops/Reference/RopeRef.cs. Autograd wrapper and tables: Ops/Functional.Rope.cs.
//
// Each pair (x1, x2) of features of a head at position t is rotated by the angle theta[t, i]:
//   y1 = x1 cos - x2 sin
//   y2 = x1 sin + x2 cos
// The pair is (i, i + D/2) for RotateHalf (Hugging Face) and (2i, 2i + 1) for Interleaved (Meta,
// llama2.c). The rotation is orthogonal, so its backward is the rotation by -theta, i.e. the same
// kernel with sin negated: that is what inverse = true does.
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    public void Rope(Tensor x, Tensor cos, Tensor sin, RopeLayout layout, bool inverse, Tensor y)
    {
        CheckFloat(x, "rope");
        if (x.DType == DType.F32) RopeTyped<float>(x, cos, sin, layout, inverse, y);
        else RopeTyped<double>(x, cos, sin, layout, inverse, y);
    }

    private static void RopeTyped<T>(Tensor x, Tensor cos, Tensor sin, RopeLayout layout, bool inverse, Tensor y)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        // x and y are (B, T, H, D); cos and sin are (T, D/2)
        int bt = x.shape[0] * x.shape[1], t = x.shape[1], h = x.shape[2], d = x.shape[3], half = d / 2;
        if (bt == 0 || h == 0 || half == 0) return;
        var cosT = Dense(cos);
        var sinT = Dense(sin);
        if (inverse)
        {
            // rotation by -theta: cos(-a) = cos a, sin(-a) = -sin a. The table is T * D/2, tiny next to x.
            var neg = new Tensor(sinT.Shape, sinT.DType, Instance.Device);
            Instance.Unary(UnaryOp.Neg, sinT, neg);
            sinT = neg;
        }
        // One work item is one (b, t): its H heads share one row of the tables.
        CpuParallel.For(bt, 3L * h * d, (start, end) =>
        {
            var xs = Span<T>(x);
            var ys = Span<T>(y);
            ReadOnlySpan<T> cs = Span<T>(cosT);
            ReadOnlySpan<T> ss = Span<T>(sinT);
            for (int row = start; row < end; row++)
            {
                var c = cs.Slice(row % t * half, half);
                var s = ss.Slice(row % t * half, half);
                for (int head = 0; head < h; head++)
                {
                    int o = (row * h + head) * d;
                    if (layout == RopeLayout.RotateHalf)
                        RotateHalfRow(xs.Slice(o, d), c, s, ys.Slice(o, d));
                    else
                        RotateInterleavedRow(xs.Slice(o, d), c, s, ys.Slice(o, d));
                }
            }
        });
    }

    /// <summary>Pairs (i, i + D/2): both halves are contiguous, so plain SIMD over i.</summary>
    private static void RotateHalfRow<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> c, ReadOnlySpan<T> s, Span<T> y)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int half = c.Length;
        ref T x1 = ref Unsafe.AsRef(in x[0]);
        ref T x2 = ref Unsafe.Add(ref x1, half);
        ref T y1 = ref y[0];
        ref T y2 = ref Unsafe.Add(ref y1, half);
        ref T cr = ref Unsafe.AsRef(in c[0]);
        ref T sr = ref Unsafe.AsRef(in s[0]);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= half - Vector256<T>.Count; i += Vector256<T>.Count)
            {
                var a = Vector256.LoadUnsafe(ref x1, (nuint)i);
                var b = Vector256.LoadUnsafe(ref x2, (nuint)i);
                var cv = Vector256.LoadUnsafe(ref cr, (nuint)i);
                var sv = Vector256.LoadUnsafe(ref sr, (nuint)i);
                (a * cv - b * sv).StoreUnsafe(ref y1, (nuint)i);
                (a * sv + b * cv).StoreUnsafe(ref y2, (nuint)i);
            }
        }
        for (; i < half; i++)
        {
            T a = Unsafe.Add(ref x1, i), b = Unsafe.Add(ref x2, i), cv = Unsafe.Add(ref cr, i), sv = Unsafe.Add(ref sr, i);
            Unsafe.Add(ref y1, i) = a * cv - b * sv;
            Unsafe.Add(ref y2, i) = a * sv + b * cv;
        }
    }

    /// <summary>
    /// Pairs (2i, 2i + 1). Scalar: the pairs are adjacent lanes, and on a row of D = 64 the loop is
    /// bound by memory traffic rather than by arithmetic (see FusedOpsBenchmarks for the measured rate).
    /// </summary>
    private static void RotateInterleavedRow<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> c, ReadOnlySpan<T> s, Span<T> y)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (int i = 0; i < c.Length; i++)
        {
            T a = x[2 * i], b = x[2 * i + 1];
            y[2 * i] = a * c[i] - b * s[i];
            y[2 * i + 1] = a * s[i] + b * c[i];
        }
    }
}
