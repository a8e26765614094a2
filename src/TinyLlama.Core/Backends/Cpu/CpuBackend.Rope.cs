// Rotary position embedding on the CPU (Su et al., "RoFormer: Enhanced Transformer with Rotary Position
// Embedding", 2021). Reference: Ops/Reference/RopeRef.cs. Autograd wrapper and tables: Ops/Functional.Rope.cs.
//
// Each pair (x1, x2) of features of a head at position t is rotated by the angle theta[t, i]:
//   y1 = x1 cos - x2 sin
//   y2 = x1 sin + x2 cos
// The pair is (i, i + D/2) for RotateHalf (Hugging Face) and (2i, 2i + 1) for Interleaved (Meta,
// llama2.c). The rotation is orthogonal, so its backward is the rotation by -theta, i.e. the same
// kernel with sin negated: that is what inverse = true does.
using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
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
        // Per-call tables in the layout of a head row, built once (T * D elements, small next to x's
        // B * T * H * D) so the inner loops are plain SIMD:
        //   RotateHalf:  cs = (c_0 .. c_{D/2-1}), ss = (+-s_0 .. +-s_{D/2-1})           (T, D/2) each
        //   Interleaved: cs = (c_0, c_0, c_1, c_1, ...), ss = (-s_0, +s_0, -s_1, +s_1, ...) (T, D) each,
        //                so y = x * cs + swap_pairs(x) * ss.
        // The sign of sin is flipped for the inverse rotation (cos(-a) = cos a, sin(-a) = -sin a).
        int width = layout == RopeLayout.RotateHalf ? half : d;
        var cs = ArrayPool<T>.Shared.Rent(t * width);
        var ss = ArrayPool<T>.Shared.Rent(t * width);
        try
        {
            ReadOnlySpan<T> c0 = Span<T>(cosT), s0 = Span<T>(sinT);
            T sign = inverse ? -T.One : T.One;
            for (int i = 0; i < t * half; i++)
            {
                if (layout == RopeLayout.RotateHalf)
                {
                    cs[i] = c0[i];
                    ss[i] = sign * s0[i];
                }
                else
                {
                    cs[2 * i] = cs[2 * i + 1] = c0[i];
                    ss[2 * i] = -sign * s0[i];
                    ss[2 * i + 1] = sign * s0[i];
                }
            }
            // One work item is one (b, t): its H heads share one row of the tables.
            CpuParallel.For(bt, 3L * h * d, (start, end) =>
            {
                var xs = Span<T>(x);
                var ys = Span<T>(y);
                for (int row = start; row < end; row++)
                {
                    var c = new ReadOnlySpan<T>(cs, row % t * width, width);
                    var s = new ReadOnlySpan<T>(ss, row % t * width, width);
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
        finally
        {
            ArrayPool<T>.Shared.Return(cs);
            ArrayPool<T>.Shared.Return(ss);
        }
    }

    /// <summary>Pairs (i, i + D/2): y1 = x1 c - x2 s, y2 = x1 s + x2 c; both halves are contiguous, so plain SIMD over i.</summary>
    private static void RotateHalfRow<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> c, ReadOnlySpan<T> s, Span<T> y)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int half = c.Length;
        ref T x1 = ref MemoryMarshal.GetReference(x);
        ref T x2 = ref Unsafe.Add(ref x1, half);
        ref T y1 = ref MemoryMarshal.GetReference(y);
        ref T y2 = ref Unsafe.Add(ref y1, half);
        ref T cr = ref MemoryMarshal.GetReference(c);
        ref T sr = ref MemoryMarshal.GetReference(s);
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
    /// Pairs (2i, 2i + 1) with the expanded tables c = (c_i, c_i), s = (-s_i, +s_i) per pair:
    /// y = x * c + swap_pairs(x) * s, where swap_pairs exchanges the two lanes of every pair (one shuffle).
    /// </summary>
    private static void RotateInterleavedRow<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> c, ReadOnlySpan<T> s, Span<T> y)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int d = x.Length, i = 0;
        ref T xr = ref MemoryMarshal.GetReference(x);
        ref T yr = ref MemoryMarshal.GetReference(y);
        ref T cr = ref MemoryMarshal.GetReference(c);
        ref T sr = ref MemoryMarshal.GetReference(s);
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= d - Vector256<T>.Count; i += Vector256<T>.Count)
            {
                var a = Vector256.LoadUnsafe(ref xr, (nuint)i);
                (a * Vector256.LoadUnsafe(ref cr, (nuint)i) + SwapPairs(a) * Vector256.LoadUnsafe(ref sr, (nuint)i)).StoreUnsafe(ref yr, (nuint)i);
            }
        }
        for (; i < d; i += 2)
        {
            T a = Unsafe.Add(ref xr, i), b = Unsafe.Add(ref xr, i + 1);
            Unsafe.Add(ref yr, i) = a * Unsafe.Add(ref cr, i) + b * Unsafe.Add(ref sr, i);
            Unsafe.Add(ref yr, i + 1) = b * Unsafe.Add(ref cr, i + 1) + a * Unsafe.Add(ref sr, i + 1);
        }
    }

    /// <summary>(v0, v1, v2, v3, ...) -> (v1, v0, v3, v2, ...).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<T> SwapPairs<T>(Vector256<T> v) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
            return Vector256.Shuffle(v.AsSingle(), Vector256.Create(1, 0, 3, 2, 5, 4, 7, 6)).As<float, T>();
        if (typeof(T) == typeof(double))
            return Vector256.Shuffle(v.AsDouble(), Vector256.Create(1L, 0, 3, 2)).As<double, T>();
        throw new NotSupportedException(typeof(T).Name);
    }
}
