// Scaled dot-product attention with grouped-query heads and a causal mask aligned bottom-right
// (Vaswani et al., 2017; GQA: Ainslie et al., 2023), computed FlashAttention style (Dao et al., 2022;
// Dao, 2023): o = softmax(scale q k^T + mask) v without materialising the T x S matrix; the log-sum-exp
// of each row is saved and the backward recomputes the probabilities from it. Math and tiling:
// CpuBackend.Attention.cs; naive definition: Ops/Reference/AttentionRef.cs.
using TinyLlama.Autograd;
using TinyLlama.Backends.Cpu;

namespace TinyLlama.Tensors;

public static partial class Functional
{
    /// <summary>
    /// softmax(scale q k^T + mask) v for q [B, H, T, D] and k, v [B, KVH, S, D], where H is a multiple
    /// of KVH and query head h reads kv head h / (H / KVH). scale defaults to 1 / sqrt(D). With causal,
    /// query t sees keys s &lt;= t + S - T (aligned bottom-right, as a KV cache needs); a query row that
    /// sees no key (only when S &lt; T) gives zeros. Returns [B, H, T, D]. 16-bit inputs are computed in
    /// f32 and the result rounded back.
    /// </summary>
    public static Tensor ScaledDotProductAttention(Tensor q, Tensor k, Tensor v, bool causal = true, double? scale = null)
    {
        const string op = "scaled_dot_product_attention";
        CheckFloatInputs(op, q, k, v);
        if (q.Rank != 4 || k.Rank != 4 || v.Rank != 4)
            throw new ArgumentException($"{op}: expected q [B, H, T, D] and k, v [B, KVH, S, D], got q {Shapes.Format(q.shape)}, k {Shapes.Format(k.shape)}, v {Shapes.Format(v.shape)}");
        if (!k.shape.AsSpan().SequenceEqual(v.shape))
            throw new ArgumentException($"{op}: k {Shapes.Format(k.shape)} and v {Shapes.Format(v.shape)} must have the same shape");
        if (q.shape[0] != k.shape[0] || q.shape[3] != k.shape[3])
            throw new ArgumentException($"{op}: q {Shapes.Format(q.shape)} and k {Shapes.Format(k.shape)} differ in batch size or head size");
        if (k.shape[1] == 0 || q.shape[1] % k.shape[1] != 0)
            throw new ArgumentException($"{op}: q {Shapes.Format(q.shape)} has {q.shape[1]} heads, not a multiple of the {k.shape[1]} kv heads of k {Shapes.Format(k.shape)}");
        double sc = scale ?? 1.0 / Math.Sqrt(q.shape[3]);
        if (!double.IsFinite(sc)) throw new ArgumentException($"{op}: scale must be finite, got {sc}");
        int b = q.shape[0], h = q.shape[1], t = q.shape[2], d = q.shape[3];
        var ct = FusedComputeType(q.DType);
        // qc is (B, H, T, D), kc and vc are (B, KVH, S, D); with o and lse they are saved for the backward.
        var qc = q.Detach().CastRaw(ct).Contiguous();
        // Inference on the CPU reads k and v in place when each (batch, kv head) block has dense rows,
        // as a narrowed KV cache does; the backward and the ILGPU kernels want dense tensors.
        bool inPlace = q.Device == Device.Cpu && !(GradMode.IsEnabled && (q.RequiresGrad || k.RequiresGrad || v.RequiresGrad));
        var kc = inPlace && k.DType == ct && HasDenseRows(k) ? k.Detach() : k.Detach().CastRaw(ct).Contiguous();
        var vc = inPlace && v.DType == ct && HasDenseRows(v) && SameLayout(v, kc) ? v.Detach() : v.Detach().CastRaw(ct).Contiguous();
        if (!SameLayout(kc, vc)) kc = kc.Contiguous();
        var o = Tensor.Zeros([b, h, t, d], ct, q.Device);
        var lse = Tensor.Zeros([b, h, t], ct, q.Device);
        q.Backend.Attention(qc, kc, vc, sc, causal, o, lse);
        var oSaved = o.Detach();
        return Engine.Record(o.CastRaw(q.DType), "ScaledDotProductAttentionBackward", [q, k, v], g =>
        {
            var dO = g.CastRaw(ct).Contiguous();
            var dq = Tensor.Zeros(qc.shape, ct, g.Device);
            var dk = Tensor.Zeros(kc.shape, ct, g.Device);
            var dv = Tensor.Zeros(vc.shape, ct, g.Device);
            g.Backend.AttentionBackward(qc, kc, vc, oSaved, lse, dO, sc, causal, dq, dk, dv);
            return [q.RequiresGrad ? dq.CastRaw(q.DType) : null,
                    k.RequiresGrad ? dk.CastRaw(k.DType) : null,
                    v.RequiresGrad ? dv.CastRaw(v.DType) : null];
        });
    }

    /// <summary>True when x (B, KVH, S, D) has contiguous rows of D and consecutive rows: only its batch and head strides are free.</summary>
    private static bool HasDenseRows(Tensor x) => CpuBackend.HasDenseRows(x.shape, Shapes.SteppedStrides(x.shape, x.strides));

    /// <summary>True when a and b (same shape) step through memory alike: equal strides wherever a dimension is larger than 1.</summary>
    private static bool SameLayout(Tensor a, Tensor b) =>
        Shapes.SteppedStrides(a.shape, a.strides).AsSpan().SequenceEqual(Shapes.SteppedStrides(b.shape, b.strides));
}
