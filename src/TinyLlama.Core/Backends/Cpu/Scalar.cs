// Conversions between the storage element types and double/float, resolved at JIT time by typeof checks.
using System.Runtime.CompilerServices;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

internal static class Scalar
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double ToDouble<T>(T v) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return Unsafe.As<T, float>(ref v);
        if (typeof(T) == typeof(double)) return Unsafe.As<T, double>(ref v);
        if (typeof(T) == typeof(Half)) return (double)Unsafe.As<T, Half>(ref v);
        if (typeof(T) == typeof(BFloat16)) return Unsafe.As<T, BFloat16>(ref v).ToSingle();
        if (typeof(T) == typeof(int)) return Unsafe.As<T, int>(ref v);
        if (typeof(T) == typeof(byte)) return Unsafe.As<T, byte>(ref v);
        throw new NotSupportedException(typeof(T).Name);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T FromDouble<T>(double d) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) { float f = (float)d; return Unsafe.As<float, T>(ref f); }
        if (typeof(T) == typeof(double)) return Unsafe.As<double, T>(ref d);
        if (typeof(T) == typeof(Half)) { Half h = (Half)d; return Unsafe.As<Half, T>(ref h); }
        if (typeof(T) == typeof(BFloat16)) { var b = BFloat16.FromSingle((float)d); return Unsafe.As<BFloat16, T>(ref b); }
        if (typeof(T) == typeof(int)) { int i = checked((int)d); return Unsafe.As<int, T>(ref i); }
        if (typeof(T) == typeof(byte)) { byte b = checked((byte)d); return Unsafe.As<byte, T>(ref b); }
        throw new NotSupportedException(typeof(T).Name);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle<T>(T v) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return Unsafe.As<T, float>(ref v);
        if (typeof(T) == typeof(Half)) return (float)Unsafe.As<T, Half>(ref v);
        if (typeof(T) == typeof(BFloat16)) return Unsafe.As<T, BFloat16>(ref v).ToSingle();
        return (float)ToDouble(v);
    }

    /// <summary>erf(x) to about 1e-15: Taylor series for |x| &lt; 2.5, continued fraction for erfc beyond.</summary>
    public static double Erf(double x)
    {
        if (double.IsNaN(x)) return x;
        double ax = Math.Abs(x);
        if (ax < 2.5)
        {
            // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
            double x2 = x * x, term = x, sum = x;
            for (int n = 1; n < 80; n++)
            {
                term *= -x2 / n;
                double add = term / (2 * n + 1);
                sum += add;
                if (Math.Abs(add) < 1e-17 * Math.Abs(sum)) break;
            }
            return sum * 1.1283791670955126; // 2/sqrt(pi)
        }
        if (ax > 6.0) return Math.Sign(x);
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...))))), evaluated bottom-up.
        double f = ax;
        for (int n = 60; n >= 1; n--) f = ax + n * 0.5 / f;
        double erfc = Math.Exp(-ax * ax) / (f * 1.7724538509055159);
        return Math.Sign(x) * (1.0 - erfc);
    }
}
