// Element types and scalar math shared by the kernels.
//  - IElement<T>: how a storage element type converts to and from double, so one generic kernel serves
//    every dtype (Copy converts through double, which is exact for every widening and rounds once for
//    every narrowing, as the CPU backend's Copy does).
//  - F16 and BF16 are stored as their raw ushort bits and converted with integer operations, round to
//    nearest even. ILGPU.Half is not used: its float-to-half conversion outside the PTX backend truncates
//    the mantissa (measured: 41735 of 100000 random floats differ from System.Half), and bf16 has no type.
//  - Erf: the same series / continued fraction as the CPU backend (Backends/Cpu/Scalar.cs), so GELU
//    agrees to about 1e-15.
// No memory traffic: these are per-element functions inlined into the kernels.
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Conversions of one storage element type (all kernels work through these, never typeof).</summary>
public interface IElement<T> where T : unmanaged
{
    /// <summary>The value as a double (exact for every supported type).</summary>
    double ToDouble(T value);

    /// <summary>The nearest representable value (round to nearest even; integers truncate toward zero).</summary>
    T FromDouble(double value);
}

/// <summary>
/// Atomic accumulation for the float types, as a compare-and-swap loop on the value's bit pattern.
/// Not ILGPU's Atomic.Add(float/double): on the CPU accelerator that is a compare-and-swap loop comparing
/// the float values, and once the target holds NaN the comparison never succeeds, so the thread spins
/// forever and the process hangs (measured with ILGPU 1.5.3). Comparing bits is correct for every value
/// on every accelerator; the price on CUDA is a CAS loop instead of a native red.add.
/// </summary>
public interface IAtomicElement<T> : IElement<T> where T : unmanaged
{
    /// <summary>view[index] += value, atomically.</summary>
    void AtomicAdd(ArrayView<T> view, int index, T value);
}

/// <summary>float32.</summary>
public readonly struct F32 : IAtomicElement<float>
{
    public double ToDouble(float value) => value;
    public float FromDouble(double value) => (float)value;

    public void AtomicAdd(ArrayView<float> view, int index, float value)
    {
        var bits = view.Cast<int>();
        int old = bits[index];
        while (true)
        {
            int assumed = old;
            int next = (int)Interop.FloatAsInt(Interop.IntAsFloat((uint)assumed) + value);
            old = Atomic.CompareExchange(ref bits[index], assumed, next);
            if (old == assumed) return;
        }
    }
}

/// <summary>float64.</summary>
public readonly struct F64 : IAtomicElement<double>
{
    public double ToDouble(double value) => value;
    public double FromDouble(double value) => value;

    public void AtomicAdd(ArrayView<double> view, int index, double value)
    {
        var bits = view.Cast<long>();
        long old = bits[index];
        while (true)
        {
            long assumed = old;
            long next = (long)Interop.FloatAsInt(Interop.IntAsFloat((ulong)assumed) + value);
            old = Atomic.CompareExchange(ref bits[index], assumed, next);
            if (old == assumed) return;
        }
    }
}

/// <summary>IEEE binary16 held as its raw bits.</summary>
public readonly struct F16 : IElement<ushort>
{
    public double ToDouble(ushort value) => HalfBits.ToSingle(value);
    public ushort FromDouble(double value) => HalfBits.FromDouble(value);
}

/// <summary>bfloat16 held as its raw bits (the high half of a binary32).</summary>
public readonly struct BF16 : IElement<ushort>
{
    public double ToDouble(ushort value) => Interop.IntAsFloat((uint)value << 16);
    // Through float first, exactly as TinyLlama.Tensors.BFloat16 converts a double.
    public ushort FromDouble(double value) => HalfBits.BFloat16FromSingle((float)value);
}

/// <summary>int32 (ids, indices); conversion from double truncates toward zero.</summary>
public readonly struct I32 : IElement<int>
{
    public double ToDouble(int value) => value;
    public int FromDouble(double value) => (int)value;
}

/// <summary>Raw bytes (quantized blocks); only copied byte to byte.</summary>
public readonly struct U8 : IElement<byte>
{
    public double ToDouble(byte value) => value;
    public byte FromDouble(double value) => (byte)value;
}

/// <summary>Bit-level conversions for the 16-bit float formats.</summary>
public static class HalfBits
{
    /// <summary>binary16 bits to float (exact).</summary>
    public static float ToSingle(ushort h)
    {
        uint sign = (uint)(h & 0x8000) << 16;
        int exponent = (h >> 10) & 0x1F;
        uint mantissa = (uint)(h & 0x3FF);
        if (exponent == 0x1F) return Interop.IntAsFloat(sign | 0x7F80_0000u | (mantissa << 13));  // inf, NaN
        if (exponent != 0) return Interop.IntAsFloat(sign | ((uint)(exponent + 112) << 23) | (mantissa << 13));
        // zero or subnormal: mantissa * 2^-24, exact in float
        float magnitude = mantissa * 5.9604644775390625e-8f;
        return sign != 0 ? -magnitude : magnitude;
    }

    /// <summary>double to the nearest binary16 (ties to even), as System.Half's explicit conversion.</summary>
    public static ushort FromDouble(double value)
    {
        ulong bits = Interop.FloatAsInt(value);
        uint sign = (uint)(bits >> 48) & 0x8000u;
        ulong abs = bits & 0x7FFF_FFFF_FFFF_FFFFul;
        if (abs > 0x7FF0_0000_0000_0000ul) return (ushort)(sign | 0x7E00u);         // NaN (quiet)
        if (abs >= 0x40EF_FE00_0000_0000ul) return (ushort)(sign | 0x7C00u);        // >= 65520 rounds to inf
        int exponent = (int)(abs >> 52) - 1023;
        ulong significand = (abs & 0x000F_FFFF_FFFF_FFFFul) | 0x0010_0000_0000_0000ul;
        if (exponent < -25) return (ushort)sign;                                  // below half the smallest subnormal
        // Normal results keep 10 of the 52 mantissa bits (shift 42); subnormals are multiples of 2^-24.
        int shift = exponent >= -14 ? 42 : 28 - exponent;
        ulong kept = exponent >= -14
            ? ((ulong)(exponent + 15) << 10) | ((significand & 0x000F_FFFF_FFFF_FFFFul) >> 42)
            : significand >> shift;
        ulong rest = significand & ((1ul << shift) - 1);
        ulong halfway = 1ul << (shift - 1);
        if (rest > halfway || (rest == halfway && (kept & 1) != 0)) kept++;  // a carry moves into the exponent, as it should
        return (ushort)(sign | (uint)kept);
    }

    /// <summary>float to the nearest bfloat16 (ties to even), as TinyLlama.Tensors.BFloat16.FromSingle.</summary>
    public static ushort BFloat16FromSingle(float value)
    {
        uint u = Interop.FloatAsInt(value);
        if ((u & 0x7FFF_FFFFu) > 0x7F80_0000u) return (ushort)((u >> 16) | 0x0040u);  // NaN stays quiet NaN
        uint rounding = 0x7FFFu + ((u >> 16) & 1u);
        return (ushort)((u + rounding) >> 16);
    }
}

/// <summary>Scalar functions kernels need beyond the operators.</summary>
public static class DeviceMath
{
    /// <summary>erf(x) to about 1e-15 (same method as the CPU backend's Scalar.Erf).</summary>
    public static double Erf(double x)
    {
        if (double.IsNaN(x)) return x;
        double ax = Math.Abs(x);
        double sign = x < 0 ? -1.0 : 1.0;
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
            return sum * 1.1283791670955126;
        }
        if (ax > 6.0) return sign;
        // erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), evaluated bottom-up.
        double f = ax;
        for (int n = 60; n >= 1; n--) f = ax + n * 0.5 / f;
        double erfc = Math.Exp(-ax * ax) / (f * 1.7724538509055159);
        return sign * (1.0 - erfc);
    }

    /// <summary>max that propagates NaN (as the CPU backend's Maximum and Max reductions).</summary>
    public static T MaxNaN<T>(T a, T b) where T : unmanaged, IFloatingPointIeee754<T> =>
        T.IsNaN(a) || T.IsNaN(b) ? T.NaN : (a > b ? a : b);

    /// <summary>min that propagates NaN.</summary>
    public static T MinNaN<T>(T a, T b) where T : unmanaged, IFloatingPointIeee754<T> =>
        T.IsNaN(a) || T.IsNaN(b) ? T.NaN : (a < b ? a : b);
}
