// Batched matmul on the CPU: walk the batch dims of c and call the GEMM (Gemm.cs) once per matrix,
// splitting the work across threads either inside each GEMM (few large matrices) or across matrices
// (many small ones). c [..., M, N] = a [..., M, K] @ b [..., K, N] (+ c), a and b through their strides.
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    public void MatMul(Tensor a, Tensor b, Tensor c, bool accumulate = false)
    {
        int r = c.Rank;
        int m = c.shape[r - 2], n = c.shape[r - 1], k = a.shape[r - 1];
        if (a.shape[r - 2] != m || b.shape[r - 2] != k || b.shape[r - 1] != n)
            throw new ArgumentException($"matmul: {Shapes.Format(a.shape)} @ {Shapes.Format(b.shape)} -> {Shapes.Format(c.shape)}");
        if (!c.IsContiguous) throw new ArgumentException("matmul: output must be contiguous");
        bool f64 = c.DType == DType.F64;
        if (f64 ? a.DType != DType.F64 || b.DType != DType.F64 : c.DType != DType.F32 || a.DType == DType.F64 || b.DType == DType.F64)
            throw new NotSupportedException($"matmul: {a.DType.Name()} @ {b.DType.Name()} -> {c.DType.Name()} (the CPU computes f64 @ f64 -> f64, or f32/f16/bf16 inputs -> f32)");

        // Offsets of each matrix in the batch.
        int batch = c.Numel / Math.Max(1, m * n);
        if (m * n == 0) batch = Shapes.Numel(c.shape.AsSpan(0, r - 2));
        var aOff = new int[batch];
        var bOff = new int[batch];
        for (int i = 0; i < batch; i++)
        {
            int rem = i, ao = a.Offset, bo = b.Offset;
            for (int d = r - 3; d >= 0; d--)
            {
                int idx = rem % c.shape[d];
                rem /= c.shape[d];
                ao += idx * a.strides[d];
                bo += idx * b.strides[d];
            }
            aOff[i] = ao;
            bOff[i] = bo;
        }
        var A = new GemmOperand(Host(a), a.strides[r - 2], a.strides[r - 1]);
        var B = new GemmOperand(Host(b), b.strides[r - 2], b.strides[r - 1]);
        var C = Host(c);
        if (k == 0)
        {
            if (!accumulate) Fill(c, 0);
            return;
        }
        // Split across the batch (one single-threaded GEMM per matrix, no synchronisation inside)
        // when there are enough matrices to share evenly and each is small enough that its own
        // pack buffers per thread are cheap (attention: B*H products of [T, D] @ [D, T]); a matrix
        // too small to be split inside goes across the batch whenever there are several.
        long flopsPerMatrix = 2L * m * n * k;
        int threads = CpuThreads.Count;
        bool acrossBatch = batch >= threads && threads > 1 &&
            (flopsPerMatrix < Gemm.ParallelMinFlops ||
             (flopsPerMatrix < (1L << 27) && (batch >= 4 * threads || batch % threads == 0)));
        if (acrossBatch)
        {
            Parallel.For(0, batch, CpuThreads.Options, i => Gemm.Run(m, n, k, A, aOff[i], B, bOff[i], C, c.Offset + i * m * n, n, accumulate, parallel: false));
        }
        else
        {
            for (int i = 0; i < batch; i++)
                Gemm.Run(m, n, k, A, aOff[i], B, bOff[i], C, c.Offset + i * m * n, n, accumulate, parallel: true);
        }
    }
}
