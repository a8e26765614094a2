// bfloat16: a float32 with the low 16 mantissa bits dropped (8-bit exponent, 7-bit mantissa).
// Conversion from float rounds to nearest, ties to even, as PyTorch and the safetensors producers do.
using System.Runtime.CompilerServices;

namespace TinyLlama.Tensors;

/// <summary>A bfloat16 value stored as its 16 raw bits.</summary>
public readonly struct BFloat16 : IEquatable<BFloat16>
{
    /// <summary>The raw bits: the high half of the equivalent binary32.</summary>
    public readonly ushort Bits;

    /// <summary>Wraps raw bits.</summary>
    public BFloat16(ushort bits) => Bits = bits;

    /// <summary>Rounds a float to the nearest bfloat16 (ties to even); NaN stays a quiet NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static BFloat16 FromSingle(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7FFF_FFFFu) > 0x7F80_0000u) return new BFloat16((ushort)((u >> 16) | 0x0040)); // NaN
        uint rounding = 0x7FFFu + ((u >> 16) & 1u);
        return new BFloat16((ushort)((u + rounding) >> 16));
    }

    /// <summary>Widens to float exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float ToSingle() => BitConverter.UInt32BitsToSingle((uint)Bits << 16);

    public static explicit operator BFloat16(float f) => FromSingle(f);
    public static explicit operator BFloat16(double d) => FromSingle((float)d);
    public static explicit operator float(BFloat16 b) => b.ToSingle();
    public static explicit operator double(BFloat16 b) => b.ToSingle();

    public bool Equals(BFloat16 other) => Bits == other.Bits;
    public override bool Equals(object? obj) => obj is BFloat16 b && Equals(b);
    public override int GetHashCode() => Bits;
    public override string ToString() => ToSingle().ToString(System.Globalization.CultureInfo.InvariantCulture);
}
