// RMSNorm on the CPU (Zhang and Sennrich, "Root Mean Square Layer Normalization", 2019; LLaMA's norm).
// Reference: Ops/Reference/RmsNormRef.cs. Autograd wrapper: Ops/Functional.RmsNorm.cs.
//
// Forward, per row n of x [N, C]:
//   rstd[n] = 1 / sqrt(mean_c x[n, c]^2 + eps)
//   y[n, c] = x[n, c] * rstd[n] * weight[c]
// Backward, with g[c] = dy[n, c] * weight[c]:
//   dx[n, c]    = rstd[n] * g[c] - rstd[n]^3 / C * x[n, c] * sum_c' g[c'] x[n, c']
//   dWeight[c]  = sum_n dy[n, c] * x[n, c] * rstd[n]
// dWeight is a sum over rows: rows are cut into a fixed number of chunks (a function of N and C only,
// never of the thread count), each chunk sums into its own partial row, and the partials are added in
// chunk order, so the result is bit-identical from run to run and machine to machine.
using System.Buffers;
using System.Numerics;
using System.Numerics.Tensors;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    /// <summary>Upper bound on dWeight partial rows (memory: chunks * C elements).</summary>
    private const int RmsNormMaxChunks = 64;

    public void RmsNorm(Tensor x, Tensor weight, double eps, Tensor y, Tensor rstd)
    {
        CheckFloat(x, "rms_norm");
        if (x.DType == DType.F32) RmsNormTyped<float>(x, weight, (float)eps, y, rstd);
        else RmsNormTyped<double>(x, weight, eps, y, rstd);
    }

    private static void RmsNormTyped<T>(Tensor x, Tensor weight, T eps, Tensor y, Tensor rstd)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        // x is (N, C), weight is (C), y is (N, C), rstd is (N)
        int n = x.shape[0], c = x.shape[1];
        var w = Dense(weight);
        T invC = T.One / T.CreateChecked(c);
        CpuParallel.For(n, 3L * c, (start, end) =>
        {
            var xs = Span<T>(x);
            var ys = Span<T>(y);
            var rs = Span<T>(rstd);
            ReadOnlySpan<T> ws = Span<T>(w);
            for (int r = start; r < end; r++)
            {
                var xr = xs.Slice(r * c, c);
                var yr = ys.Slice(r * c, c);
                T s = T.One / T.Sqrt(TensorPrimitives.SumOfSquares<T>(xr) * invC + eps);
                rs[r] = s;
                TensorPrimitives.Multiply<T>(xr, s, yr);
                TensorPrimitives.Multiply<T>(yr, ws, yr);
            }
        });
    }

    public void RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor dx, Tensor dWeight)
    {
        CheckFloat(x, "rms_norm backward");
        if (x.DType == DType.F32) RmsNormBackwardTyped<float>(dy, x, weight, rstd, dx, dWeight);
        else RmsNormBackwardTyped<double>(dy, x, weight, rstd, dx, dWeight);
    }

    private static void RmsNormBackwardTyped<T>(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor dx, Tensor dWeight)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        // dy, x, dx are (N, C); weight, dWeight are (C); rstd is (N)
        int n = x.shape[0], c = x.shape[1];
        var w = Dense(weight);
        if (n == 0 || c == 0)
        {
            Instance.Fill(dWeight, 0);
            return;
        }
        // About 16K elements per chunk, at most RmsNormMaxChunks chunks: enough to feed every core on
        // the sizes that matter while keeping the partial rows small.
        int chunks = (int)Math.Clamp((long)n * c / 16384, 1, Math.Min(n, RmsNormMaxChunks));
        // partial is (chunks, C): one dWeight row per chunk; scratch is (chunks, C): x * rstd of one row
        var partial = ArrayPool<T>.Shared.Rent(chunks * c);
        var scratch = ArrayPool<T>.Shared.Rent(chunks * c);
        try
        {
            T invC = T.One / T.CreateChecked(c);
            CpuParallel.For(chunks, 6L * c * (n / chunks), (start, end) =>
            {
                var gs = Span<T>(dy);
                var xs = Span<T>(x);
                var rs = Span<T>(rstd);
                var ds = Span<T>(dx);
                ReadOnlySpan<T> ws = Span<T>(w);
                for (int k = start; k < end; k++)
                {
                    var acc = partial.AsSpan(k * c, c);
                    var xhat = scratch.AsSpan(k * c, c);
                    acc.Clear();
                    int r0 = (int)((long)n * k / chunks), r1 = (int)((long)n * (k + 1) / chunks);
                    for (int r = r0; r < r1; r++)
                    {
                        var gr = gs.Slice(r * c, c);
                        var xr = xs.Slice(r * c, c);
                        var dr = ds.Slice(r * c, c);
                        T s = rs[r];
                        // dWeight partial += dy * (x * rstd)
                        TensorPrimitives.Multiply<T>(xr, s, xhat);
                        TensorPrimitives.FusedMultiplyAdd<T>(gr, xhat, acc, acc);
                        // dx = rstd * g - (rstd^3 / C) * (g . x) * x, with g = dy * weight held in dx
                        TensorPrimitives.Multiply<T>(gr, ws, dr);
                        T dot = TensorPrimitives.Dot<T>(dr, xr);
                        TensorPrimitives.Multiply<T>(dr, s, dr);
                        TensorPrimitives.MultiplyAdd<T>(xr, -(s * s * s * invC * dot), dr, dr);
                    }
                }
            });
            // Deterministic reduction of the partial rows, in chunk order.
            var dw = Span<T>(dWeight);
            partial.AsSpan(0, c).CopyTo(dw);
            for (int k = 1; k < chunks; k++)
                TensorPrimitives.Add<T>(dw, partial.AsSpan(k * c, c), dw);
        }
        finally
        {
            ArrayPool<T>.Shared.Return(partial);
            ArrayPool<T>.Shared.Return(scratch);
        }
    }

    /// <summary>t itself when contiguous, else a dense copy (for small side inputs such as a weight row or a table).</summary>
    private static Tensor Dense(Tensor t)
    {
        if (t.IsContiguous) return t;
        var d = new Tensor(t.Shape, t.DType, Instance.Device);
        Instance.Copy(t, d);
        return d;
    }
}
