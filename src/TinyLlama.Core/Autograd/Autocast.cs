// Automatic mixed precision, as torch.autocast: inside a scope, matrix products cast their f32 inputs
// to a 16-bit type (bf16 or f16) and accumulate in f32, while parameters stay f32 ("master weights")
// and receive f32 gradients through the cast's backward. Elementwise ops follow type promotion
// (f32 op bf16 -> f32), so norms, softmax and the residual stream stay in f32.
using TinyLlama.Tensors;

namespace TinyLlama.Autograd;

/// <summary>Thread-local mixed-precision mode.</summary>
public static class Autocast
{
    [ThreadStatic] private static DType? current;

    /// <summary>The 16-bit type matmuls compute in, or null when autocast is off.</summary>
    public static DType? Current => current;

    /// <summary>Enables autocast to <paramref name="dtype"/> (BF16 or F16; F32 turns it off) until disposed.</summary>
    public static Scope Enable(DType dtype)
    {
        if (dtype is not (DType.BF16 or DType.F16 or DType.F32))
            throw new ArgumentException($"autocast computes in bf16 or f16 (or f32 for off), not {dtype.Name()}");
        var scope = new Scope(current);
        current = dtype == DType.F32 ? null : dtype;
        return scope;
    }

    /// <summary>Restores the previous mode when disposed.</summary>
    public readonly struct Scope(DType? saved) : IDisposable
    {
        public void Dispose() => current = saved;
    }
}
