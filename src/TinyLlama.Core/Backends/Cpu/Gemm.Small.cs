// Small-M GEMM: C[M, N] (+)= A[M, K] @ B[K, N] for M <= 4 (decoding one token at a time:
// x [1, C] @ W^T). Such a product does 2 flops per element of B, so it is bound by reading B once
// from memory; the blocked GEMM would first copy all of B into packed panels (read B, write a
// copy, read the copy), three times the traffic for no reuse. Here B is read in place instead:
//   B row-major (column stride 1):  C[i, :] += A[i, p] * B[p, :]   (axpy over rows of B)
//   B = W^T (row stride 1, i.e. each column of B is a contiguous row of W), A rows contiguous:
//                                   C[i, j]  = dot(A[i, :], B[:, j])
// Columns of C are split into chunks that run in parallel. Other layouts, 16-bit inputs, and calls
// that ask for a specific micro-kernel take the blocked path (Gemm.cs).
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

internal static unsafe partial class Gemm
{
    /// <summary>Largest M served by the unpacked small-M path.</summary>
    internal const int SmallMMax = 4;

    /// <summary>True when the small-M path serves this call (see the file header).</summary>
    private static bool UseSmallM<T>(in GemmArgs g) where T : unmanaged
    {
        var compute = typeof(T) == typeof(float) ? DType.F32 : DType.F64;
        return g.M <= SmallMMax && g.Options.Kernel == GemmKernel.Auto &&
               g.AType == compute && g.BType == compute &&
               (g.BColStride == 1 || (g.BRowStride == 1 && g.AColStride == 1));
    }

    private static void RunSmallM<T>(ref GemmArgs args) where T : unmanaged
    {
        // Chunks: 512 columns of C (M x 512 f32 stay in L1 while B's rows stream past) for the axpy
        // form; 64 columns (64 dot products of length K) for the dot form.
        int chunk = args.BColStride == 1 ? 512 : 64;
        int chunks = (args.N + chunk - 1) / chunk;
        bool parallel = args.Parallel && CpuThreads.Count > 1 && chunks > 1 && 2L * args.M * args.N * args.K >= ParallelMinFlops;
        if (!parallel)
        {
            SmallMColumns<T>(in args, 0, args.N);
            return;
        }
        var g = args;
        System.Threading.Tasks.Parallel.For(0, chunks, CpuThreads.Options, ci => SmallMColumns<T>(in g, ci * chunk, Math.Min(g.N, (ci + 1) * chunk)));
    }

    /// <summary>Columns [j0, j1) of C from unpacked A and B.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static void SmallMColumns<T>(in GemmArgs g, int j0, int j1) where T : unmanaged
    {
        T* a = (T*)g.A + g.AOffset, b = (T*)g.B + g.BOffset, c = (T*)g.C;
        int m = g.M, k = g.K, len = j1 - j0;
        if (g.BColStride == 1)
        {
            // C[i, j0:j1] (=|+=) sum_p A[i, p] B[p, j0:j1]: each chunk of a B row is used for all M rows while in L1.
            if (!g.Accumulate)
                for (int i = 0; i < m; i++) new Span<T>(c + i * g.Ldc + j0, len).Clear();
            for (int p = 0; p < k; p++)
            {
                T* bRow = b + p * g.BRowStride + j0;
                for (int i = 0; i < m; i++)
                    Axpy(c + i * g.Ldc + j0, a[i * g.ARowStride + p * g.AColStride], bRow, len);
            }
        }
        else
        {
            // B's column j is contiguous (stride 1 along k), and so is each row of A.
            int j = j0;
            if (typeof(T) == typeof(float) && Vector256.IsHardwareAccelerated && k >= 8)
            {
                // Four columns at a time: each 8-wide chunk of a_i is loaded once for four rows of W,
                // with four independent accumulators (the loop is bound by streaming W from memory).
                float* sums = stackalloc float[4];
                for (; j + 4 <= j1; j += 4)
                {
                    for (int i = 0; i < m; i++)
                    {
                        Dot4((float*)(a + i * g.ARowStride), (float*)(b + j * g.BColStride), g.BColStride, k, sums);
                        float* cij = (float*)(c + i * g.Ldc + j);
                        for (int q = 0; q < 4; q++) cij[q] = g.Accumulate ? cij[q] + sums[q] : sums[q];
                    }
                }
            }
            for (; j < j1; j++)
            {
                T* bCol = b + j * g.BColStride;
                for (int i = 0; i < m; i++)
                {
                    T* cij = c + i * g.Ldc + j;
                    T d = Dot(a + i * g.ARowStride, bCol, k);
                    *cij = g.Accumulate ? Add(*cij, d) : d;
                }
            }
        }
    }

    /// <summary>sums[q] = dot(x[0:k], w_q[0:k]) for the four rows w_q = w + q * stride (k &gt;= 8).</summary>
    private static void Dot4(float* x, float* w, nint stride, int k, float* sums)
    {
        float* w0 = w, w1 = w + stride, w2 = w + 2 * stride, w3 = w + 3 * stride;
        Vector256<float> s0 = Vector256<float>.Zero, s1 = s0, s2 = s0, s3 = s0;
        int p = 0;
        for (; p + 8 <= k; p += 8)
        {
            var xv = Vector256.Load(x + p);
            s0 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(w0 + p), s0);
            s1 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(w1 + p), s1);
            s2 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(w2 + p), s2);
            s3 = Vector256.FusedMultiplyAdd(xv, Vector256.Load(w3 + p), s3);
        }
        float t0 = Vector256.Sum(s0), t1 = Vector256.Sum(s1), t2 = Vector256.Sum(s2), t3 = Vector256.Sum(s3);
        for (; p < k; p++)
        {
            float xp = x[p];
            t0 += xp * w0[p]; t1 += xp * w1[p]; t2 += xp * w2[p]; t3 += xp * w3[p];
        }
        sums[0] = t0; sums[1] = t1; sums[2] = t2; sums[3] = t3;
    }

    /// <summary>y[0:n] += alpha * x[0:n].</summary>
    private static void Axpy<T>(T* y, T alpha, T* x, int n) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
            TensorPrimitives.FusedMultiplyAdd(new ReadOnlySpan<float>(x, n), *(float*)&alpha, new ReadOnlySpan<float>(y, n), new Span<float>(y, n));
        else
            TensorPrimitives.FusedMultiplyAdd(new ReadOnlySpan<double>(x, n), *(double*)&alpha, new ReadOnlySpan<double>(y, n), new Span<double>(y, n));
    }

    /// <summary>sum_p x[p] y[p].</summary>
    private static T Dot<T>(T* x, T* y, int n) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
        {
            float d = TensorPrimitives.Dot(new ReadOnlySpan<float>(x, n), new ReadOnlySpan<float>(y, n));
            return *(T*)&d;
        }
        double e = TensorPrimitives.Dot(new ReadOnlySpan<double>(x, n), new ReadOnlySpan<double>(y, n));
        return *(T*)&e;
    }

    private static T Add<T>(T x, T y) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) { float s = *(float*)&x + *(float*)&y; return *(T*)&s; }
        double t = *(double*)&x + *(double*)&y;
        return *(T*)&t;
    }
}
