// Naive batched matrix product for the ILGPU backend: simple and correct, the reference the optimised
// GEMM kernels (Gemm*.cs) are measured against. Math (IBackend.MatMul):
//   c[b, i, j] (+)= sum_k a[b, i, k] b[b, k, j]
// a and b may have any strides (a transposed operand is a permuted view) and batch strides (0 for a
// broadcast batch); f16/bf16 inputs are widened exactly and accumulated in f32; f64 in f64.
//
// Tiling: none. One thread per element of c [batch, M, N] (j fastest, so a warp reads one row of a
// broadcast and N consecutive b columns); each thread runs the K loop alone, reading a row of a and a
// column of b from global memory. Traffic: 2 K reads per output element (no reuse through shared
// memory: about K/16 times the traffic of a 16x16-tiled GEMM), one write.
using System.Numerics;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Sizes and inner strides of one matrix product.</summary>
public struct MatMulShape
{
    public int M, N, K;
    /// <summary>Row and column strides of a [M, K] and of b [K, N].</summary>
    public int ARowStride, AColStride, BRowStride, BColStride;
    /// <summary>1 to add into c instead of overwriting it.</summary>
    public int Accumulate;
}

/// <summary>Naive matmul kernel.</summary>
public static class NaiveMatMulKernels
{
    /// <summary>
    /// Element i = (batch M + row) N + col of c. aBatch and bBatch map the batch index to the start of each
    /// operand's matrix (batch sizes with the operand's batch strides, and its offset).
    /// </summary>
    public static void MatMulForwardKernel<TIn, TInE, T, TE>(Index1D i, ArrayView<TIn> a, StridedLayout aBatch, ArrayView<TIn> b, StridedLayout bBatch,
                                                             ArrayView<T> c, MatMulShape s)
        where TIn : unmanaged where TInE : struct, IElement<TIn>
        where T : unmanaged, IFloatingPointIeee754<T> where TE : struct, IElement<T>
    {
        int mn = s.M * s.N;
        int batch = i / mn, rem = i - batch * mn;
        int row = rem / s.N, col = rem - row * s.N;
        int ai = aBatch.IndexOf(batch) + row * s.ARowStride;
        int bi = bBatch.IndexOf(batch) + col * s.BColStride;
        T acc = T.Zero;
        for (int k = 0; k < s.K; k++)
        {
            // Widening through double is exact for every input type (f64, f32, f16, bf16).
            T av = default(TE).FromDouble(default(TInE).ToDouble(a[ai]));
            T bv = default(TE).FromDouble(default(TInE).ToDouble(b[bi]));
            acc += av * bv;
            ai += s.AColStride;
            bi += s.BRowStride;
        }
        c[i] = s.Accumulate != 0 ? c[i] + acc : acc;
    }
}
