// Embedding lookup (gather) and its backward (scatter-add). Math: Backends/Cpu/CpuBackend.Softmax.cs:
//   y[n, c] = weight[ids[n], c];   dWeight[ids[n], c] += dy[n, c].
//
// Forward: one thread per output element; weight may be strided (row and column strides), any dtype
// (a raw copy). Traffic: one read and one write per element, plus the id (cached).
// Backward: one thread per element of dy, atomic add into dWeight (a compare-and-swap on the bits, see
// IAtomicElement). Rows hit by several ids race only through the atomics, so the summation order (and the
// last bits of the result) may vary from run to run. Traffic: one read of dy and one atomic per element.
// Ids out of [0, V) are skipped; the forward records the first one in the device error buffer
// (DeviceErrors), which the host turns into an error at its next read.
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Embedding kernels.</summary>
public static class EmbeddingKernels
{
    /// <summary>y[i] (i = n C + c) = weight[offset + ids[n] rowStride + c colStride].</summary>
    public static void EmbeddingForwardKernel<T>(Index1D i, ArrayView<T> weight, int offset, int rowStride, int colStride, int v,
                                                 ArrayView<int> ids, int c, ArrayView<T> y, ArrayView<int> errors) where T : unmanaged
    {
        int n = i / c, col = i - n * c;
        int id = ids[n];
        if ((uint)id < (uint)v) y[i] = weight[offset + id * rowStride + col * colStride];
        else if (col == 0) DeviceErrors.Report(errors, DeviceErrors.EmbeddingId, id, n, v);
    }

    /// <summary>dWeight[ids[n], c] += dy[n, c] for element i = n C + c of dy.</summary>
    public static void EmbeddingBackwardKernel<T, TE>(Index1D i, ArrayView<T> dy, ArrayView<int> ids, int c, int v, ArrayView<T> dWeight)
        where T : unmanaged where TE : struct, IAtomicElement<T>
    {
        int n = i / c, col = i - n * c;
        int id = ids[n];
        if ((uint)id < (uint)v) default(TE).AtomicAdd(dWeight, id * c + col, dy[i]);
    }
}
