// Row-wise softmax / log-softmax, embedding gather/scatter and the fused cross-entropy on the CPU.
// Math: softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m) with m = max_j x_j (stable);
// log-softmax = x - m - log sum exp(x - m); cross-entropy = logsumexp(x) - x_target.
using System.Numerics;
using System.Numerics.Tensors;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed partial class CpuBackend
{
    public void Softmax(Tensor x, Tensor y, bool log)
    {
        CheckFloat(x, "softmax");
        if (x.DType == DType.F32) SoftmaxTyped<float>(x, y, log);
        else SoftmaxTyped<double>(x, y, log);
    }

    private static void SoftmaxTyped<T>(Tensor x, Tensor y, bool log) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int n = x.shape.Length == 0 ? 1 : x.shape[^1];
        int rows = n == 0 ? 0 : x.Numel / n;
        CpuParallel.For(rows, n * 4L, (start, end) =>
        {
            var xs = Span<T>(x);
            var ys = Span<T>(y);
            T[]? scratch = null;
            for (int r = start; r < end; r++)
            {
                var xr = xs.Slice(r * n, n);
                var yr = ys.Slice(r * n, n);
                T max = TensorPrimitives.Max<T>(xr);
                if (T.IsNegativeInfinity(max)) max = T.Zero; // a fully masked row gives NaN like PyTorch only through 0/0 below
                TensorPrimitives.Subtract<T>(xr, max, yr);
                if (log)
                {
                    // log-softmax = (x - m) - log(sum exp(x - m)); the exps go to a scratch row.
                    scratch ??= new T[n];
                    TensorPrimitives.Exp<T>(yr, scratch);
                    T sum = TensorPrimitives.Sum<T>(scratch);
                    TensorPrimitives.Subtract<T>(yr, T.Log(sum), yr);
                }
                else
                {
                    TensorPrimitives.Exp<T>(yr, yr);
                    T sum = TensorPrimitives.Sum<T>(yr);
                    TensorPrimitives.Divide<T>(yr, sum, yr);
                }
            }
        });
    }

    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, bool log)
    {
        CheckFloat(y, "softmax backward");
        if (y.DType == DType.F32) SoftmaxBackwardTyped<float>(y, dy, dx, log);
        else SoftmaxBackwardTyped<double>(y, dy, dx, log);
    }

    private static void SoftmaxBackwardTyped<T>(Tensor y, Tensor dy, Tensor dx, bool log) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int n = y.shape.Length == 0 ? 1 : y.shape[^1];
        int rows = n == 0 ? 0 : y.Numel / n;
        CpuParallel.For(rows, n * 4L, (start, end) =>
        {
            var ys = Span<T>(y);
            var gs = Span<T>(dy);
            var ds = Span<T>(dx);
            for (int r = start; r < end; r++)
            {
                var yr = ys.Slice(r * n, n);
                var gr = gs.Slice(r * n, n);
                var dr = ds.Slice(r * n, n);
                if (log)
                {
                    // dx = dy - softmax * sum(dy), softmax = exp(y)
                    T sum = TensorPrimitives.Sum<T>(gr);
                    for (int i = 0; i < n; i++) dr[i] = gr[i] - T.Exp(yr[i]) * sum;
                }
                else
                {
                    // dx = y * (dy - sum(dy * y))
                    T dot = TensorPrimitives.Dot<T>(gr, yr);
                    TensorPrimitives.Subtract<T>(gr, dot, dr);
                    TensorPrimitives.Multiply<T>(dr, yr, dr);
                }
            }
        });
    }

    public void Embedding(Tensor weight, Tensor ids, Tensor y)
    {
        int v = weight.shape[0], c = weight.shape[1];
        var idx = Span<int>(ids).ToArray();
        Functional.CheckEmbeddingIds(idx, v);
        // One strided copy per row keeps dtype handling in Copy (f16/bf16 tables gather without conversion).
        CpuParallel.For(idx.Length, c, (start, end) =>
        {
            for (int n = start; n < end; n++)
            {
                var src = new Tensor(weight.Storage, [c], [weight.strides[1]], weight.Offset + idx[n] * weight.strides[0]);
                var dst = new Tensor(y.Storage, [c], [1], y.Offset + n * c);
                CopyRow(src, dst);
            }
        });
    }

    private static void CopyRow(Tensor src, Tensor dst)
    {
        if (src.DType == dst.DType && src.strides[0] == 1)
        {
            switch (src.DType)
            {
                case DType.F32: Span<float>(src).CopyTo(Span<float>(dst)); return;
                case DType.F64: Span<double>(src).CopyTo(Span<double>(dst)); return;
            }
        }
        Instance.Copy(src, dst);
    }

    public void EmbeddingBackward(Tensor dy, Tensor ids, Tensor dWeight)
    {
        CheckFloat(dWeight, "embedding backward");
        var idx = Span<int>(ids).ToArray();
        int c = dWeight.shape[1];
        if (dWeight.DType == DType.F32) ScatterAdd<float>(dy, idx, dWeight, c);
        else ScatterAdd<double>(dy, idx, dWeight, c);
    }

    private static void ScatterAdd<T>(Tensor dy, int[] idx, Tensor dWeight, int c) where T : unmanaged, IFloatingPointIeee754<T>
    {
        // Rows are split by column blocks across threads, so two ids hitting the same row never race.
        int blocks = Math.Max(1, Math.Min(CpuThreads.Count, c / 64));
        Parallel.For(0, blocks, CpuThreads.Options, blk =>
        {
            int c0 = c * blk / blocks, c1 = c * (blk + 1) / blocks;
            var g = Span<T>(dy);
            var w = Span<T>(dWeight);
            for (int n = 0; n < idx.Length; n++)
                TensorPrimitives.Add<T>(w.Slice(idx[n] * c + c0, c1 - c0), g.Slice(n * c + c0, c1 - c0), w.Slice(idx[n] * c + c0, c1 - c0));
        });
    }

    public void CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex, Tensor losses, Tensor lse)
    {
        CheckFloat(logits, "cross_entropy");
        int v = logits.shape[1];
        Functional.CheckAndCountTargets(Span<int>(targets), v, ignoreIndex);
        if (logits.DType == DType.F32) CrossEntropyTyped<float>(logits, targets, ignoreIndex, losses, lse);
        else CrossEntropyTyped<double>(logits, targets, ignoreIndex, losses, lse);
    }

    private static void CrossEntropyTyped<T>(Tensor logits, Tensor targets, int ignoreIndex, Tensor losses, Tensor lse)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int v = logits.shape[1], rows = logits.shape[0];
        CpuParallel.For(rows, v * 2L, (start, end) =>
        {
            var x = Span<T>(logits);
            var tg = Span<int>(targets);
            var l = Span<T>(losses);
            var s = Span<T>(lse);
            var scratch = new T[v]; // one row of exp(x - max), reused for every row of this block
            for (int n = start; n < end; n++)
            {
                var row = x.Slice(n * v, v);
                T m = TensorPrimitives.Max<T>(row);
                TensorPrimitives.Subtract<T>(row, m, scratch);
                TensorPrimitives.Exp<T>(scratch, scratch);
                T sum = TensorPrimitives.Sum<T>(scratch);
                T logZ = m + T.Log(sum);
                s[n] = logZ;
                l[n] = tg[n] == ignoreIndex ? T.Zero : logZ - row[tg[n]];
            }
        });
    }

    public void CrossEntropyBackward(Tensor logits, Tensor targets, Tensor lse, int ignoreIndex, Tensor scale, Tensor dLogits)
    {
        CheckFloat(logits, "cross_entropy backward");
        if (scale.Numel != 1) throw new ArgumentException($"cross_entropy backward: scale must have one element, got {Shapes.Format(scale.Shape)}");
        double s = scale.Item(); // host memory: no synchronisation
        if (logits.DType == DType.F32) CrossEntropyBackwardTyped(logits, targets, lse, ignoreIndex, (float)s, dLogits);
        else CrossEntropyBackwardTyped(logits, targets, lse, ignoreIndex, s, dLogits);
    }

    private static void CrossEntropyBackwardTyped<T>(Tensor logits, Tensor targets, Tensor lse, int ignoreIndex, T scale, Tensor dLogits)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int v = logits.shape[1], rows = logits.shape[0];
        CpuParallel.For(rows, v * 2L, (start, end) =>
        {
            var x = Span<T>(logits);
            var tg = Span<int>(targets);
            var s = Span<T>(lse);
            var d = Span<T>(dLogits);
            for (int n = start; n < end; n++)
            {
                var dr = d.Slice(n * v, v);
                if (tg[n] == ignoreIndex) { dr.Clear(); continue; }
                // d loss / d x = softmax(x) - onehot(target)
                TensorPrimitives.Subtract<T>(x.Slice(n * v, v), s[n], dr);
                TensorPrimitives.Exp<T>(dr, dr);
                dr[tg[n]] -= T.One;
                TensorPrimitives.Multiply<T>(dr, scale, dr);
            }
        });
    }
}
