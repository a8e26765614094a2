// Device-side input errors (as CUDA's device-side asserts): a kernel that meets an id it cannot use
// (an embedding id or a cross-entropy target outside [0, V)) skips it and records the first such id in
// a four-int buffer [kind, value, position, limit]. The host reads the buffer where it waits anyway (when
// it downloads a result) and turns it into a one-line error, so checking ids costs no extra round trip.
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Error kinds recorded by kernels, and the recording helper.</summary>
public static class DeviceErrors
{
    /// <summary>Ints in the error buffer: kind, value, position, limit.</summary>
    public const int Length = 4;

    public const int None = 0;
    public const int EmbeddingId = 1;
    public const int CrossEntropyTarget = 2;

    /// <summary>Records (kind, value, position, limit) unless an earlier error is already recorded.</summary>
    public static void Report(ArrayView<int> errors, int kind, int value, int position, int limit)
    {
        if (Atomic.CompareExchange(ref errors[0], None, kind) == None)
        {
            errors[1] = value;
            errors[2] = position;
            errors[3] = limit;
        }
    }
}
