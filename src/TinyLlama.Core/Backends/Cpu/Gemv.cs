// Matrix-vector products for decoding: C[M, N] = A[M, K] @ B[K, N] with M small (1 to 4 tokens) and
// B the transposed view of a row-major weight W[N, K] (B's K-stride is 1), i.e. c[i, j] = dot(a_i, w_j).
// At M = 1 the GEMM's packing of B would cost as much memory traffic as the product itself, so this
// path reads each weight row once, straight from where it lies, and is bound by memory bandwidth:
// 4 K N bytes of weights per call, 2 M N K flops.
using System.Numerics.Tensors;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

internal static class Gemv
{
    /// <summary>Largest M handled here; beyond it the packed GEMM wins.</summary>
    public const int MaxRows = 4;

    /// <summary>Runs the product when the operands fit this path (f32, K-contiguous A rows and W rows); false otherwise.</summary>
    public static bool TryRun(int m, int n, int k, GemmOperand a, int aOffset, GemmOperand b, int bOffset,
                              CpuStorage c, int cOffset, int ldc, bool accumulate, bool parallel)
    {
        if (m > MaxRows || (a.ColStride != 1 && k > 1) || (b.RowStride != 1 && k > 1)) return false;
        if (a.Storage.DType != DType.F32 || b.Storage.DType != DType.F32 || c.DType != DType.F32) return false;
        int wStride = b.ColStride, aStride = a.RowStride;
        void Columns(int start, int end)
        {
            var A = a.Storage.AsSpan<float>();
            var W = b.Storage.AsSpan<float>();
            var C = c.AsSpan<float>();
            for (int j = start; j < end; j++)
            {
                var w = W.Slice(bOffset + j * wStride, k);          // w_j is (K)
                for (int i = 0; i < m; i++)
                {
                    float dot = TensorPrimitives.Dot(A.Slice(aOffset + i * aStride, k), w);
                    ref float dst = ref C[cOffset + i * ldc + j];
                    dst = accumulate ? dst + dot : dot;
                }
            }
        }
        if (parallel) CpuParallel.For(n, 2L * m * k, Columns);
        else Columns(0, n);
        return true;
    }
}
