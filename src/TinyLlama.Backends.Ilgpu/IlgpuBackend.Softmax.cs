// Softmax, embedding and cross-entropy on the ILGPU backend (kernels/TinyLlama.Kernels/Softmax.cs,
// Embedding.cs, CrossEntropy.cs). Embedding and CrossEntropy read their ids back to the host first, to
// reject out-of-range ids with the CPU backend's message (one synchronisation per call; the trainer
// already reads the targets back to count them).
using System.Numerics;
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

public sealed partial class IlgpuBackend
{
    public void Softmax(Tensor x, Tensor y, bool log)
    {
        CheckFloat(x, "softmax");
        CheckSameDType("softmax", x, y);
        CheckShape("softmax", y, x.Shape);
        int n = x.Rank == 0 ? 1 : x.Size(-1);
        int rows = n == 0 ? 0 : x.Numel / n;
        lock (gate)
        {
            if (x.DType == DType.F32) SoftmaxTyped<float>(x, y, n, rows, log);
            else SoftmaxTyped<double>(x, y, n, rows, log);
        }
    }

    private void SoftmaxTyped<T>(Tensor x, Tensor y, int n, int rows, bool log) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var xv = Dense<T>(x, "softmax");
        var yv = Dense<T>(y, "softmax");
        if (rows == 0) return;
        Auto(SoftmaxKernels.SoftmaxForwardKernel<T>, accelerator.LoadStreamKernel)(Rows(rows), xv, yv, n, log ? 1 : 0);
    }

    public void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, bool log)
    {
        CheckFloat(y, "softmax backward");
        CheckSameDType("softmax backward", y, dy, dx);
        CheckShape("softmax backward", dy, y.Shape);
        CheckShape("softmax backward", dx, y.Shape);
        int n = y.Rank == 0 ? 1 : y.Size(-1);
        int rows = n == 0 ? 0 : y.Numel / n;
        lock (gate)
        {
            if (y.DType == DType.F32) SoftmaxBackwardTyped<float>(y, dy, dx, n, rows, log);
            else SoftmaxBackwardTyped<double>(y, dy, dx, n, rows, log);
        }
    }

    private void SoftmaxBackwardTyped<T>(Tensor y, Tensor dy, Tensor dx, int n, int rows, bool log) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var yv = Dense<T>(y, "softmax backward");
        var gv = Dense<T>(dy, "softmax backward");
        var dv = Dense<T>(dx, "softmax backward");
        if (rows == 0) return;
        Auto(SoftmaxKernels.SoftmaxBackwardKernel<T>, accelerator.LoadStreamKernel)(Rows(rows), yv, gv, dv, n, log ? 1 : 0);
    }

    // ---------------- embedding ----------------

    public void Embedding(Tensor weight, Tensor ids, Tensor y)
    {
        if (weight.Rank != 2 || ids.DType != DType.I32 || ids.Rank != 1)
            throw new ArgumentException($"embedding: weight [V, C] and int32 ids [N] expected, got weight {Shapes.Format(weight.Shape)} and {ids.DType.Name()} ids {Shapes.Format(ids.Shape)}");
        int v = weight.Size(0), c = weight.Size(1), n = ids.Numel;
        CheckShape("embedding", y, n, c);
        if (y.DType != weight.DType) throw new ArgumentException($"embedding: output {y.DType.Name()} for a {weight.DType.Name()} table");
        lock (gate)
        {
            Layouts("embedding", weight.Shape, weight);   // bounds of the (possibly strided) table
            CheckDense(y, "embedding");
            // Ids are checked inside the kernel (DeviceErrors), not read back here.
            if (y.Numel == 0) return;
            switch (weight.DType)
            {
                case DType.F32: EmbeddingTyped<float>(weight, ids, y, v, c); break;
                case DType.F64: EmbeddingTyped<double>(weight, ids, y, v, c); break;
                case DType.F16 or DType.BF16: EmbeddingTyped<ushort>(weight, ids, y, v, c); break;
                case DType.I32: EmbeddingTyped<int>(weight, ids, y, v, c); break;
                case DType.Q4 or DType.Q8_0 or DType.Q4_K or DType.Q6_K: EmbeddingTyped<byte>(weight, ids, y, v, c); break;   // whole rows of blocks
                default: throw new NotSupportedException($"embedding: a {weight.DType.Name()} table");
            }
        }
    }

    private void EmbeddingTyped<T>(Tensor weight, Tensor ids, Tensor y, int v, int c) where T : unmanaged
    {
        var st = weight.Strides;
        Auto(EmbeddingKernels.EmbeddingForwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(
            y.Numel, Whole<T>(weight, "embedding"), weight.Offset, st[0], st[1], v, Dense<int>(ids, "embedding"), c, Dense<T>(y, "embedding"), ErrorView);
    }

    public void EmbeddingBackward(Tensor dy, Tensor ids, Tensor dWeight)
    {
        CheckFloat(dWeight, "embedding backward");
        CheckSameDType("embedding backward", dWeight, dy);
        if (dWeight.Rank != 2 || ids.DType != DType.I32 || ids.Rank != 1)
            throw new ArgumentException($"embedding backward: dWeight [V, C] and int32 ids [N] expected, got {Shapes.Format(dWeight.Shape)} and {ids.DType.Name()} {Shapes.Format(ids.Shape)}");
        int v = dWeight.Size(0), c = dWeight.Size(1);
        CheckShape("embedding backward", dy, ids.Numel, c);
        lock (gate)
        {
            var idv = Dense<int>(ids, "embedding backward");
            if (dy.Numel == 0) return;
            if (dWeight.DType == DType.F32)
                Auto(EmbeddingKernels.EmbeddingBackwardKernel<float, F32>, accelerator.LoadAutoGroupedStreamKernel)(
                    dy.Numel, Dense<float>(dy, "embedding backward"), idv, c, v, Dense<float>(dWeight, "embedding backward"));
            else
                Auto(EmbeddingKernels.EmbeddingBackwardKernel<double, F64>, accelerator.LoadAutoGroupedStreamKernel)(
                    dy.Numel, Dense<double>(dy, "embedding backward"), idv, c, v, Dense<double>(dWeight, "embedding backward"));
        }
    }

    // ---------------- cross-entropy ----------------

    public void CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex, Tensor losses, Tensor lse)
    {
        CheckFloat(logits, "cross_entropy");
        CheckSameDType("cross_entropy", logits, losses, lse);
        if (logits.Rank != 2 || targets.DType != DType.I32)
            throw new ArgumentException($"cross_entropy: logits [N, V] and int32 targets [N] expected, got {Shapes.Format(logits.Shape)} and {targets.DType.Name()}");
        int n = logits.Size(0), v = logits.Size(1);
        CheckShape("cross_entropy", targets, n);
        CheckShape("cross_entropy", losses, n);
        CheckShape("cross_entropy", lse, n);
        lock (gate)
        {
            // Targets are checked inside the kernel (DeviceErrors), not read back here.
            if (logits.DType == DType.F32) CrossEntropyTyped<float>(logits, targets, ignoreIndex, losses, lse, n, v);
            else CrossEntropyTyped<double>(logits, targets, ignoreIndex, losses, lse, n, v);
        }
    }

    private void CrossEntropyTyped<T>(Tensor logits, Tensor targets, int ignoreIndex, Tensor losses, Tensor lse, int n, int v)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var xv = Dense<T>(logits, "cross_entropy");
        var lv = Dense<T>(losses, "cross_entropy");
        var sv = Dense<T>(lse, "cross_entropy");
        if (n == 0) return;
        Auto(CrossEntropyKernels.CrossEntropyForwardKernel<T>, accelerator.LoadStreamKernel)(
            Rows(n), xv, Dense<int>(targets, "cross_entropy"), v, ignoreIndex, lv, sv, ErrorView);
    }

    public void CrossEntropyBackward(Tensor logits, Tensor targets, Tensor lse, int ignoreIndex, Tensor scale, Tensor dLogits)
    {
        CheckFloat(logits, "cross_entropy backward");
        CheckSameDType("cross_entropy backward", logits, lse, dLogits);
        if (logits.Rank != 2 || targets.DType != DType.I32)
            throw new ArgumentException($"cross_entropy backward: logits [N, V] and int32 targets [N] expected, got {Shapes.Format(logits.Shape)} and {targets.DType.Name()}");
        int n = logits.Size(0), v = logits.Size(1);
        CheckShape("cross_entropy backward", targets, n);
        CheckShape("cross_entropy backward", lse, n);
        CheckShape("cross_entropy backward", dLogits, n, v);
        if (scale.Numel != 1 || scale.DType != logits.DType)
            throw new ArgumentException($"cross_entropy backward: scale must be one {logits.DType.Name()} element, got {scale.DType.Name()} {Shapes.Format(scale.Shape)}");
        lock (gate)
        {
            if (logits.DType == DType.F32) CrossEntropyBackwardTyped<float>(logits, targets, lse, ignoreIndex, scale, dLogits);
            else CrossEntropyBackwardTyped<double>(logits, targets, lse, ignoreIndex, scale, dLogits);
        }
    }

    private void CrossEntropyBackwardTyped<T>(Tensor logits, Tensor targets, Tensor lse, int ignoreIndex, Tensor scale, Tensor dLogits)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var scaleView = Dense<T>(scale.Contiguous(), "cross_entropy backward");
        var xv = Dense<T>(logits, "cross_entropy backward");
        var tv = Dense<int>(targets, "cross_entropy backward");
        var sv = Dense<T>(lse, "cross_entropy backward");
        var dv = Dense<T>(dLogits, "cross_entropy backward");
        if (dLogits.Numel == 0) return;
        Auto(CrossEntropyKernels.CrossEntropyBackwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(
            dLogits.Numel, xv, tv, sv, logits.Size(1), ignoreIndex, scaleView, dv);
    }
}
