// One row of llama.cpp block-quantized weights (Q4_0, Q8_0, Q4_K, Q6_K; layouts in Quantization/QuantType.cs)
// as callers outside this assembly need it: the dot product of the row with a vector, and the row expanded to
// f32. Both are the CPU backend's own kernels (CpuBackend.Quantized.cs: MatVecRow, the decoding path of
// MatMulQuantized with one row of x, and ExpandRow, the path of DequantizeBlocks), so a caller that runs rows
// itself (CpuDecoder's worker pool) gets bit for bit the values the tensor ops give.
using TinyLlama.Quantization;

namespace TinyLlama.Backends.Cpu;

/// <summary>Per-row kernels over block-quantized weights, for code that schedules rows itself.</summary>
public static unsafe class QuantizedDot
{
    /// <summary>
    /// dot(dequantize(row), x) for one row of <paramref name="k"/> weights stored as <paramref name="type"/>'s
    /// blocks at <paramref name="row"/> (k / BlockSize blocks) and x [k]. Unchecked: k must be a positive multiple
    /// of the block size and both buffers must hold that many values (validate once, e.g. with QuantTraits.RowBytes).
    /// </summary>
    public static float Row(QuantType type, byte* row, float* x, int k)
    {
        float y;
        CpuBackend.MatVecRow(type, row, x, &y, 1, 1, k);
        return y;
    }

    /// <summary>y [k] = the values of one row of <paramref name="k"/> weights in <paramref name="type"/>'s blocks (unchecked, as <see cref="Row"/>).</summary>
    public static void Expand(QuantType type, byte* row, float* y, int k) => CpuBackend.ExpandRow(type, row, y, k);
}
