// General matrix multiply on the CPU: C[M, N] (+)= A[M, K] @ B[K, N] with A and B read through
// arbitrary row/column strides (so transposed operands need no copy) and converted to the compute
// type while they are packed. This first version packs both operands densely and runs row-parallel
// SIMD axpy updates; the cache-blocked micro-kernel replaces its inner loops.
using System.Numerics.Tensors;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

/// <summary>A matrix operand: a storage and the strides of its rows and columns.</summary>
internal readonly record struct GemmOperand(CpuStorage Storage, int RowStride, int ColStride);

internal static class Gemm
{
    /// <summary>
    /// C (row-major with leading dimension ldc, starting at cOffset) = or += A @ B. Computes in f64
    /// when C is F64, else in f32 (A and B may be F32, F16 or BF16).
    /// </summary>
    public static void Run(int m, int n, int k, GemmOperand a, int aOffset, GemmOperand b, int bOffset,
                           CpuStorage c, int cOffset, int ldc, bool accumulate, bool parallel)
    {
        if (c.DType == DType.F64) RunTyped<double>(m, n, k, a, aOffset, b, bOffset, c, cOffset, ldc, accumulate, parallel);
        else RunTyped<float>(m, n, k, a, aOffset, b, bOffset, c, cOffset, ldc, accumulate, parallel);
    }

    private static void RunTyped<T>(int m, int n, int k, GemmOperand a, int aOffset, GemmOperand b, int bOffset,
                                    CpuStorage c, int cOffset, int ldc, bool accumulate, bool parallel)
        where T : unmanaged, System.Numerics.IFloatingPointIeee754<T>
    {
        var ap = new T[m * k];
        var bp = new T[k * n];
        Pack(a, aOffset, m, k, ap);
        Pack(b, bOffset, k, n, bp);
        void Rows(int start, int end)
        {
            var cs = c.AsSpan<T>();
            for (int i = start; i < end; i++)
            {
                var row = cs.Slice(cOffset + i * ldc, n);
                if (!accumulate) row.Clear();
                for (int p = 0; p < k; p++)
                    TensorPrimitives.MultiplyAdd<T>(bp.AsSpan(p * n, n), ap[i * k + p], row, row);
            }
        }
        if (parallel) CpuParallel.For(m, 2L * n * k, Rows);
        else Rows(0, m);
    }

    /// <summary>Copies a rows x cols operand into dense row-major storage of the compute type.</summary>
    private static void Pack<T>(GemmOperand x, int offset, int rows, int cols, T[] dst) where T : unmanaged
    {
        switch (x.Storage.DType)
        {
            case DType.F32: PackTyped<float, T>(x, offset, rows, cols, dst); break;
            case DType.F64: PackTyped<double, T>(x, offset, rows, cols, dst); break;
            case DType.F16: PackTyped<Half, T>(x, offset, rows, cols, dst); break;
            case DType.BF16: PackTyped<BFloat16, T>(x, offset, rows, cols, dst); break;
            default: throw new NotSupportedException($"matmul operand of dtype {x.Storage.DType.Name()}");
        }
    }

    private static void PackTyped<TS, T>(GemmOperand x, int offset, int rows, int cols, T[] dst) where TS : unmanaged where T : unmanaged
    {
        var src = x.Storage.AsSpan<TS>();
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
                dst[i * cols + j] = Scalar.FromDouble<T>(Scalar.ToDouble(src[offset + i * x.RowStride + j * x.ColStride]));
    }
}
