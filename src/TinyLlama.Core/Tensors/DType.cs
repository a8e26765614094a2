// Element types a tensor can hold, and the facts about each that the rest of the code asks for.
namespace TinyLlama.Tensors;

/// <summary>Element type of a tensor.</summary>
public enum DType
{
    /// <summary>IEEE 754 binary32; the default compute type.</summary>
    F32,
    /// <summary>IEEE 754 binary64; used for gradient checks and references.</summary>
    F64,
    /// <summary>IEEE 754 binary16 (<see cref="Half"/>).</summary>
    F16,
    /// <summary>bfloat16: the top 16 bits of a binary32 (<see cref="BFloat16"/>).</summary>
    BF16,
    /// <summary>32-bit signed integer (token ids, indices).</summary>
    I32,
    /// <summary>Q4_0 blocks (bytes, 18 per 32 weights: llama.cpp's block_q4_0); shape [rows, row bytes].</summary>
    Q4,
    /// <summary>Q8_0 blocks (bytes, 34 per 32 weights: llama.cpp's block_q8_0); shape [rows, row bytes].</summary>
    Q8_0,
    /// <summary>Q4_K super-blocks (bytes, 144 per 256 weights: llama.cpp's block_q4_K); shape [rows, row bytes].</summary>
    Q4_K,
    /// <summary>Q6_K super-blocks (bytes, 210 per 256 weights: llama.cpp's block_q6_K); shape [rows, row bytes].</summary>
    Q6_K,
}

/// <summary>Traits of each <see cref="DType"/>.</summary>
public static class DTypes
{
    /// <summary>Bytes per element (for <see cref="DType.Q4"/>, per storage byte).</summary>
    public static int SizeOf(this DType t) => t switch
    {
        DType.F32 => 4,
        DType.F64 => 8,
        DType.F16 => 2,
        DType.BF16 => 2,
        DType.I32 => 4,
        DType.Q4 or DType.Q8_0 or DType.Q4_K or DType.Q6_K => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    /// <summary>True for the floating-point types.</summary>
    public static bool IsFloat(this DType t) => t is DType.F32 or DType.F64 or DType.F16 or DType.BF16;

    /// <summary>True for the block-quantized types (byte storage; the row layout is the format's, see Quantization/QuantType.cs).</summary>
    public static bool IsQuantized(this DType t) => t is DType.Q4 or DType.Q8_0 or DType.Q4_K or DType.Q6_K;

    /// <summary>True for the 16-bit float types, which ops compute in f32.</summary>
    public static bool IsHalf(this DType t) => t is DType.F16 or DType.BF16;

    /// <summary>The name PyTorch uses (float32, bfloat16, ...).</summary>
    public static string Name(this DType t) => t switch
    {
        DType.F32 => "float32",
        DType.F64 => "float64",
        DType.F16 => "float16",
        DType.BF16 => "bfloat16",
        DType.I32 => "int32",
        DType.Q4 => "q4_0",
        DType.Q8_0 => "q8_0",
        DType.Q4_K => "q4_K",
        DType.Q6_K => "q6_K",
        _ => t.ToString(),
    };

    /// <summary>Parses f32/float32/fp32, bf16/bfloat16, f16/float16/half, f64/float64/double, i32/int32.</summary>
    public static DType Parse(string s) => s.ToLowerInvariant() switch
    {
        "f32" or "float32" or "fp32" or "float" => DType.F32,
        "f64" or "float64" or "fp64" or "double" => DType.F64,
        "f16" or "float16" or "fp16" or "half" => DType.F16,
        "bf16" or "bfloat16" => DType.BF16,
        "i32" or "int32" or "int" => DType.I32,
        _ => throw new ArgumentException($"unknown dtype '{s}': expected f32, f64, f16, bf16 or i32"),
    };

    /// <summary>The CLR element type of a storage of this dtype.</summary>
    public static Type ClrType(this DType t) => t switch
    {
        DType.F32 => typeof(float),
        DType.F64 => typeof(double),
        DType.F16 => typeof(Half),
        DType.BF16 => typeof(BFloat16),
        DType.I32 => typeof(int),
        DType.Q4 or DType.Q8_0 or DType.Q4_K or DType.Q6_K => typeof(byte),
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    /// <summary>The dtype whose storage holds elements of type <typeparamref name="T"/>.</summary>
    public static DType Of<T>() where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return DType.F32;
        if (typeof(T) == typeof(double)) return DType.F64;
        if (typeof(T) == typeof(Half)) return DType.F16;
        if (typeof(T) == typeof(BFloat16)) return DType.BF16;
        if (typeof(T) == typeof(int)) return DType.I32;
        if (typeof(T) == typeof(byte)) return DType.Q4;
        throw new NotSupportedException($"no dtype holds {typeof(T).Name}");
    }
}
