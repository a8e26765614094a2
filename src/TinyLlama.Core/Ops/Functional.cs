// Functional ops (torch.nn.functional): embedding lookup and cross-entropy here; the fused LLaMA ops
// (RMSNorm, RoPE, attention, SwiGLU) in Functional.*.cs. Each has a hand-written backward.
using TinyLlama.Autograd;

namespace TinyLlama.Tensors;

/// <summary>Stateless neural-network ops, as in torch.nn.functional.</summary>
public static partial class Functional
{
    /// <summary>
    /// Rows of weight [V, C] picked by integer ids (any shape): result [..ids.shape, C].
    /// Backward scatter-adds the gradient rows into a zero [V, C] tensor. A block-quantized table (q4, q8_0,
    /// q4_K, q6_K) gives f32 rows and no gradient (<see cref="EmbeddingQuantized"/>).
    /// </summary>
    public static Tensor Embedding(Tensor ids, Tensor weight)
    {
        if (weight.DType.IsQuantized()) return EmbeddingQuantized(ids, weight);
        if (ids.DType != DType.I32) throw new ArgumentException($"embedding: ids must be int32, got {ids.DType.Name()}");
        if (weight.Rank != 2) throw new ArgumentException($"embedding: weight must be [V, C], got {Shapes.Format(weight.shape)}");
        int c = weight.shape[1];
        var flat = ids.Detach().Contiguous().Reshape(-1);
        var y = Tensor.Zeros([flat.Numel, c], weight.DType, weight.Device);
        weight.Backend.Embedding(weight.Detach(), flat, y);
        var outShape = ids.shape.Concat(new[] { c }).ToArray();
        y = y.Reshape(outShape);
        return Engine.Record(y, "EmbeddingBackward", [weight], g =>
        {
            var ct = weight.DType.IsHalf() ? DType.F32 : weight.DType;
            var dW = Tensor.Zeros(weight.shape, ct, weight.Device);
            g.Backend.EmbeddingBackward(g.CastRaw(ct).Contiguous().Reshape(flat.Numel, c), flat, dW);
            return [dW.CastRaw(weight.DType)];
        });
    }

    /// <summary>
    /// Throws the embedding's one-line error if a host-resident id lies outside [0, rows). For callers
    /// about to upload ids to a device, whose kernels only report bad ids at the next read.
    /// </summary>
    public static void CheckEmbeddingIds(Tensor ids, int rows)
    {
        if (ids.Device != Device.Cpu || ids.DType != DType.I32) return;
        CheckEmbeddingIds(Backends.Cpu.CpuBackend.Span<int>(ids.Contiguous()), rows);
    }

    /// <summary>Throws the embedding's one-line error for the first id outside [0, rows).</summary>
    public static void CheckEmbeddingIds(ReadOnlySpan<int> ids, int rows)
    {
        for (int i = 0; i < ids.Length; i++)
            if ((uint)ids[i] >= (uint)rows) throw new ArgumentException(EmbeddingIdError(ids[i], i, rows));
    }

    /// <summary>The one-line error every backend gives for an embedding id outside [0, rows).</summary>
    public static string EmbeddingIdError(int id, int position, int rows) =>
        $"embedding: id {id} at position {position} is out of range for a table of {rows} rows";

    /// <summary>
    /// The number of targets that are not ignoreIndex; throws the cross-entropy's one-line error for the
    /// first other target outside [0, classes).
    /// </summary>
    internal static int CheckAndCountTargets(ReadOnlySpan<int> targets, int classes, int ignoreIndex)
    {
        int count = 0;
        for (int i = 0; i < targets.Length; i++)
        {
            if (targets[i] == ignoreIndex) continue;
            if ((uint)targets[i] >= (uint)classes)
                throw new ArgumentException($"cross_entropy: target {targets[i]} at row {i} is out of range for {classes} classes (ignore index {ignoreIndex})");
            count++;
        }
        return count;
    }

    /// <summary>
    /// Mean cross-entropy of logits [..., V] against int32 targets [...], over the targets that are not
    /// ignoreIndex (NaN when every target is ignored, as in PyTorch). Fused: the log-sum-exp of each row
    /// is computed once and reused by the backward, dlogits = (softmax - onehot) / count.
    /// </summary>
    public static Tensor CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex = -100)
    {
        var (sum, count) = CrossEntropySum(logits, targets, ignoreIndex);
        return count == 0 ? sum * double.NaN : sum / count;
    }

    /// <summary>Sum of the per-token cross-entropies and the number of targets counted (for custom normalisation).</summary>
    public static (Tensor Sum, int Count) CrossEntropySum(Tensor logits, Tensor targets, int ignoreIndex = -100)
    {
        if (targets.DType != DType.I32) throw new ArgumentException($"cross_entropy: targets must be int32, got {targets.DType.Name()}");
        if (logits.Rank < 1) throw new ArgumentException("cross_entropy: logits need a class dimension");
        int v = logits.shape[^1];
        int n = logits.Numel / Math.Max(v, 1);
        if (targets.Numel != n || !targets.shape.AsSpan().SequenceEqual(logits.shape.AsSpan(0, logits.Rank - 1)))
            throw new ArgumentException($"cross_entropy: logits {Shapes.Format(logits.shape)} need targets of shape {Shapes.Format(logits.shape.AsSpan(0, logits.Rank - 1))}, got {Shapes.Format(targets.shape)}");
        var ct = logits.DType.IsHalf() ? DType.F32 : logits.DType;
        var x = logits.Detach().CastRaw(ct).Contiguous().Reshape(n, v);
        var t = targets.Detach().Contiguous().Reshape(n);
        // The count (and, for a device, the range check) comes from the targets while they are still in
        // host memory, as a trainer's batches are: no read back from the device. Targets that already
        // live on a device are counted there, which waits for the device once.
        int count = t.Device == Device.Cpu
            ? CheckAndCountTargets(Backends.Cpu.CpuBackend.Span<int>(t), v, ignoreIndex)
            : (int)t.To(DType.F64).Ne(ignoreIndex).Sum().Item();
        if (t.Device != logits.Device) t = t.To(logits.Device);
        var losses = Tensor.Zeros([n], ct, logits.Device);
        var lse = Tensor.Zeros([n], ct, logits.Device);
        logits.Backend.CrossEntropy(x, t, ignoreIndex, losses, lse);
        // The loss stays in the compute type (f32 for 16-bit logits, as autocast does): a bf16 loss would
        // round the summed value to 8 significant bits.
        var sum = losses.Sum();
        sum = Engine.Record(sum, "CrossEntropyBackward", [logits], g =>
        {
            // The upstream gradient stays on the device: the backend reads it inside its kernel.
            var scale = g.Detach().CastRaw(ct).Contiguous().Reshape(1);
            var dx = Tensor.Zeros([n, v], ct, logits.Device);
            logits.Backend.CrossEntropyBackward(x, t, lse, ignoreIndex, scale, dx);
            return [dx.Reshape(logits.shape).CastRaw(logits.DType)];
        });
        return (sum, count);
    }
}
