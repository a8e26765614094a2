// Building blocks shared by the GEMM (Gemm*.cs) and attention (Attention*.cs) kernels: element types
// that widen to f32 (f32, f16 bits, bf16 bits), a 4 x 4 block of f32 accumulators that lives in
// registers, and the host-side f16/bf16 conversions the tests and the benchmark use.
//
// Why structs of scalars: ILGPU 1.5 does not unroll loops and a per-thread array would live in local
// (off-chip) memory, so a thread's register tile is spelled out as named fields, and every loop over it
// is written out by hand. The methods are tiny and marked AggressiveInlining so ILGPU inlines them and
// keeps the fields in registers.
//
// Formats: IEEE 754 binary16 (f16: 1 sign, 5 exponent, 10 mantissa bits) and bfloat16 (bf16: the top 16
// bits of an f32, so widening is `bits << 16` and narrowing rounds the low 16 bits to nearest even).
using System.Runtime.CompilerServices;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Element types the GEMM and attention kernels read and write.</summary>
public enum GemmElementType
{
    /// <summary>IEEE f32, stored as <see cref="float"/>.</summary>
    F32,
    /// <summary>IEEE f16, stored as its 16 bits in a <see cref="ushort"/>.</summary>
    F16,
    /// <summary>bfloat16, stored as its 16 bits in a <see cref="ushort"/>.</summary>
    BF16,
}

/// <summary>
/// A storage type <typeparamref name="T"/> that the kernels widen to f32 on load and narrow from f32 on
/// store. Implementations are empty structs so ILGPU resolves the calls statically (no virtual dispatch).
/// </summary>
internal interface IGemmElement<T> where T : unmanaged
{
    float ToFloat(T value);

    T FromFloat(float value);

    /// <summary>True for bf16 (selects the bf16 tensor-core instruction); a constant per type.</summary>
    bool IsBFloat16 { get; }
}

internal readonly struct F32Element : IGemmElement<float>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float ToFloat(float value) => value;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float FromFloat(float value) => value;

    public bool IsBFloat16 => false;
}

internal readonly struct F16Element : IGemmElement<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float ToFloat(ushort value) => Interop.IntAsFloat(value);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ushort FromFloat(float value) => Interop.FloatAsInt((ILGPU.Half)value);

    public bool IsBFloat16 => false;
}

internal readonly struct BF16Element : IGemmElement<ushort>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float ToFloat(ushort value) => Interop.IntAsFloat((uint)value << 16);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ushort FromFloat(float value) => ElementConvert.FloatToBFloat16Bits(value);

    public bool IsBFloat16 => true;
}

/// <summary>f16/bf16 bit conversions, usable on the host and inside kernels.</summary>
public static class ElementConvert
{
    /// <summary>The bf16 bits nearest to <paramref name="value"/> (ties to even); NaN stays a quiet NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FloatToBFloat16Bits(float value)
    {
        uint bits = Interop.FloatAsInt(value);
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u) return (ushort)((bits >> 16) | 0x0040u);
        uint rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
        return (ushort)(rounded >> 16);
    }

    /// <summary>The f32 value of bf16 bits (exact).</summary>
    public static float BFloat16BitsToFloat(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>The f16 bits nearest to <paramref name="value"/> (host only; uses System.Half).</summary>
    public static ushort FloatToHalfBits(float value) => BitConverter.HalfToUInt16Bits((System.Half)value);

    /// <summary>The f32 value of f16 bits (exact; host only).</summary>
    public static float HalfBitsToFloat(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    /// <summary>Bits of <paramref name="value"/> in <paramref name="type"/> (F16 or BF16), host only.</summary>
    public static ushort ToBits(float value, GemmElementType type) => type switch
    {
        GemmElementType.F16 => FloatToHalfBits(value),
        GemmElementType.BF16 => FloatToBFloat16Bits(value),
        _ => throw new ArgumentException($"{type} is not a 16-bit type", nameof(type)),
    };

    /// <summary>The f32 value of 16-bit <paramref name="bits"/> of <paramref name="type"/>, host only.</summary>
    public static float FromBits(ushort bits, GemmElementType type) => type switch
    {
        GemmElementType.F16 => HalfBitsToFloat(bits),
        GemmElementType.BF16 => BFloat16BitsToFloat(bits),
        _ => throw new ArgumentException($"{type} is not a 16-bit type", nameof(type)),
    };
}

/// <summary>
/// A 4 x 4 block of f32 accumulators held in registers: C[i, j] for i, j in 0..3. Which rows and
/// columns of a tile the block stands for is up to the kernel (usually rows r0 + i * step).
/// </summary>
internal struct Acc4x4
{
    public float C00, C01, C02, C03;
    public float C10, C11, C12, C13;
    public float C20, C21, C22, C23;
    public float C30, C31, C32, C33;

    /// <summary>C += a b^T: the outer product of a column (a0..a3) and a row (b0..b3), 16 FMAs.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Fma(float a0, float a1, float a2, float a3, float b0, float b1, float b2, float b3)
    {
        C00 += a0 * b0; C01 += a0 * b1; C02 += a0 * b2; C03 += a0 * b3;
        C10 += a1 * b0; C11 += a1 * b1; C12 += a1 * b2; C13 += a1 * b3;
        C20 += a2 * b0; C21 += a2 * b1; C22 += a2 * b2; C23 += a2 * b3;
        C30 += a3 * b0; C31 += a3 * b1; C32 += a3 * b2; C33 += a3 * b3;
    }

    /// <summary>Row i of C *= s_i.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void ScaleRows(float s0, float s1, float s2, float s3)
    {
        C00 *= s0; C01 *= s0; C02 *= s0; C03 *= s0;
        C10 *= s1; C11 *= s1; C12 *= s1; C13 *= s1;
        C20 *= s2; C21 *= s2; C22 *= s2; C23 *= s2;
        C30 *= s3; C31 *= s3; C32 *= s3; C33 *= s3;
    }

    /// <summary>C[i, j] for a runtime (i, j): a switch, for epilogues only (not for inner loops).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly float Get(int i, int j)
    {
        int e = i * 4 + j;
        return e switch
        {
            0 => C00, 1 => C01, 2 => C02, 3 => C03,
            4 => C10, 5 => C11, 6 => C12, 7 => C13,
            8 => C20, 9 => C21, 10 => C22, 11 => C23,
            12 => C30, 13 => C31, 14 => C32, _ => C33,
        };
    }
}
