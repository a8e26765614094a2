// Elementwise kernels: Copy (strided, converting dtype), Fill, Unary, Binary and Where.
// Math: Backends/Cpu/CpuBackend.Elementwise.cs (ApplyUnary / ApplyBinary are the definitions); the
// codes below follow the order of TinyLlama.Backends.UnaryOp and BinaryOp, mapped explicitly by the host.
//
// Tiling: none. One thread per output element, launched auto-grouped over the element count; each thread
// turns its linear index into a storage index per operand (StridedLayout.IndexOf), so permuted, sliced
// and broadcast (stride 0) operands need no copies.
// Memory traffic: one read per input and one write per element; broadcast reads hit the cache.
// In place: y may alias an input element for element (each thread reads its inputs before writing).
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Elementwise kernels.</summary>
public static class ElementwiseKernels
{
    // Unary op codes (TinyLlama.Backends.UnaryOp order).
    public const int Neg = 0, Exp = 1, Log = 2, Sqrt = 3, Rsqrt = 4, Abs = 5, Sign = 6, Sigmoid = 7, Tanh = 8, Relu = 9,
        Square = 10, Reciprocal = 11, Silu = 12, SiluGrad = 13, Gelu = 14, GeluGrad = 15, Clamp = 16;

    // Binary op codes (TinyLlama.Backends.BinaryOp order).
    public const int Add = 0, Sub = 1, Mul = 2, Div = 3, Pow = 4, Maximum = 5, Minimum = 6,
        Eq = 7, Ne = 8, Lt = 9, Le = 10, Gt = 11, Ge = 12;

    /// <summary>dst[i] = src[i] for one element type (bit copy).</summary>
    public static void CopyForwardKernel<T>(Index1D i, ArrayView<T> src, StridedLayout srcLayout, ArrayView<T> dst, StridedLayout dstLayout)
        where T : unmanaged
    {
        dst[dstLayout.IndexOf(i)] = src[srcLayout.IndexOf(i)];
    }

    /// <summary>dst[i] = convert(src[i]) through double (exact widening, one rounding when narrowing).</summary>
    public static void ConvertForwardKernel<TS, TSE, TD, TDE>(Index1D i, ArrayView<TS> src, StridedLayout srcLayout, ArrayView<TD> dst, StridedLayout dstLayout)
        where TS : unmanaged where TSE : struct, IElement<TS>
        where TD : unmanaged where TDE : struct, IElement<TD>
    {
        dst[dstLayout.IndexOf(i)] = default(TDE).FromDouble(default(TSE).ToDouble(src[srcLayout.IndexOf(i)]));
    }

    /// <summary>dst[i] = value.</summary>
    public static void FillForwardKernel<T>(Index1D i, ArrayView<T> dst, StridedLayout dstLayout, T value) where T : unmanaged
    {
        dst[dstLayout.IndexOf(i)] = value;
    }

    /// <summary>y[i] = op(x[i]); alpha and beta are Clamp's bounds.</summary>
    public static void UnaryForwardKernel<T, TE>(Index1D i, ArrayView<T> x, StridedLayout xLayout, ArrayView<T> y, StridedLayout yLayout, int op, T alpha, T beta)
        where T : unmanaged, IFloatingPointIeee754<T> where TE : struct, IElement<T>
    {
        y[yLayout.IndexOf(i)] = ApplyUnary<T, TE>(op, x[xLayout.IndexOf(i)], alpha, beta);
    }

    /// <summary>One unary function of one value (the op is uniform across a launch, so the switch does not diverge).</summary>
    public static T ApplyUnary<T, TE>(int op, T x, T alpha, T beta) where T : unmanaged, IFloatingPointIeee754<T> where TE : struct, IElement<T>
    {
        switch (op)
        {
            case Neg: return -x;
            case Exp: return T.Exp(x);
            case Log: return T.Log(x);
            case Sqrt: return T.Sqrt(x);
            case Rsqrt: return T.One / T.Sqrt(x);
            case Abs: return T.Abs(x);
            case Sign: return T.IsNaN(x) ? x : x > T.Zero ? T.One : x < T.Zero ? -T.One : T.Zero;
            case Sigmoid: return T.One / (T.One + T.Exp(-x));
            case Tanh: return T.Tanh(x);
            case Relu: return x > T.Zero ? x : T.Zero;
            case Square: return x * x;
            case Reciprocal: return T.One / x;
            case Silu: return x / (T.One + T.Exp(-x));
            case SiluGrad:
            {
                T s = T.One / (T.One + T.Exp(-x));
                return s * (T.One + x * (T.One - s));
            }
            case Gelu:
            {
                // In double for both dtypes, as the CPU backend does.
                double d = default(TE).ToDouble(x);
                return default(TE).FromDouble(0.5 * d * (1.0 + DeviceMath.Erf(d * 0.7071067811865476)));
            }
            case GeluGrad:
            {
                // d/dx [x Phi(x)] = Phi(x) + x phi(x)
                double d = default(TE).ToDouble(x);
                double cdf = 0.5 * (1.0 + DeviceMath.Erf(d * 0.7071067811865476));
                double pdf = Math.Exp(-0.5 * d * d) * 0.3989422804014327;
                return default(TE).FromDouble(cdf + d * pdf);
            }
            default: return T.IsNaN(x) ? x : x < alpha ? alpha : x > beta ? beta : x;  // Clamp
        }
    }

    /// <summary>y[i] = a[i] op b[i] (a and b already broadcast by stride 0).</summary>
    public static void BinaryForwardKernel<T>(Index1D i, ArrayView<T> a, StridedLayout aLayout, ArrayView<T> b, StridedLayout bLayout,
                                              ArrayView<T> y, StridedLayout yLayout, int op)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        y[yLayout.IndexOf(i)] = ApplyBinary(op, a[aLayout.IndexOf(i)], b[bLayout.IndexOf(i)]);
    }

    /// <summary>One binary function; comparisons give 1 or 0.</summary>
    public static T ApplyBinary<T>(int op, T a, T b) where T : unmanaged, IFloatingPointIeee754<T>
    {
        switch (op)
        {
            case Add: return a + b;
            case Sub: return a - b;
            case Mul: return a * b;
            case Div: return a / b;
            case Pow: return T.Pow(a, b);
            case Maximum: return DeviceMath.MaxNaN(a, b);
            case Minimum: return DeviceMath.MinNaN(a, b);
            case Eq: return a == b ? T.One : T.Zero;
            case Ne: return a != b ? T.One : T.Zero;
            case Lt: return a < b ? T.One : T.Zero;
            case Le: return a <= b ? T.One : T.Zero;
            case Gt: return a > b ? T.One : T.Zero;
            default: return a >= b ? T.One : T.Zero;  // Ge
        }
    }

    /// <summary>y[i] = cond[i] != 0 ? a[i] : b[i].</summary>
    public static void WhereForwardKernel<TC, TCE, T>(Index1D i, ArrayView<TC> cond, StridedLayout condLayout, ArrayView<T> a, StridedLayout aLayout,
                                                      ArrayView<T> b, StridedLayout bLayout, ArrayView<T> y, StridedLayout yLayout)
        where TC : unmanaged where TCE : struct, IElement<TC> where T : unmanaged
    {
        y[yLayout.IndexOf(i)] = default(TCE).ToDouble(cond[condLayout.IndexOf(i)]) != 0 ? a[aLayout.IndexOf(i)] : b[bLayout.IndexOf(i)];
    }
}
