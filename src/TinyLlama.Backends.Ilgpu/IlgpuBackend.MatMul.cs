// Batched matmul and attention on the ILGPU backend. On accelerators with 32-lane warps and 256-thread
// groups (CUDA, most OpenCL GPUs) f32/f16/bf16 products go to the tiled / tensor-core GEMM
// (kernels/TinyLlama.Kernels/Gemm*.cs) and f32 attention to FlashAttention (Attention*.cs); everything
// else (f64, more than two batch dims, the small-group CPU accelerator used in tests) runs the naive
// kernels (NaiveMatMul.cs, NaiveAttention.cs), which are correct for every stride, batch and dtype.
using System.Numerics;
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Ilgpu;

public sealed partial class IlgpuBackend
{
    public void MatMul(Tensor a, Tensor b, Tensor c, bool accumulate = false)
    {
        int r = c.Rank;
        if (r < 2 || a.Rank != r || b.Rank != r)
            throw new ArgumentException($"matmul: {Shapes.Format(a.Shape)} @ {Shapes.Format(b.Shape)} -> {Shapes.Format(c.Shape)} (ranks must match and be at least 2)");
        var cs = c.Shape;
        int m = cs[r - 2], n = cs[r - 1], k = a.Size(-1);
        if (a.Size(-2) != m || b.Size(-2) != k || b.Size(-1) != n || !a.Shape.AsSpan(0, r - 2).SequenceEqual(cs.AsSpan(0, r - 2)) || !b.Shape.AsSpan(0, r - 2).SequenceEqual(cs.AsSpan(0, r - 2)))
            throw new ArgumentException($"matmul: {Shapes.Format(a.Shape)} @ {Shapes.Format(b.Shape)} -> {Shapes.Format(cs)}");
        if (a.DType != b.DType) throw new ArgumentException($"matmul: dtypes {a.DType.Name()} and {b.DType.Name()} differ");
        bool f64 = c.DType == DType.F64;
        if (f64 ? a.DType != DType.F64 : c.DType != DType.F32 || a.DType is not (DType.F32 or DType.F16 or DType.BF16))
            throw new NotSupportedException($"matmul: {a.DType.Name()} @ {b.DType.Name()} -> {c.DType.Name()} (the ILGPU backend computes f64 @ f64 -> f64, or f32/f16/bf16 inputs -> f32)");
        lock (gate)
        {
            Layouts("matmul", a.Shape, a);
            Layouts("matmul", b.Shape, b);
            CheckDense(c, "matmul");
            if (c.Numel == 0) return;
            if (k == 0)
            {
                if (!accumulate) Fill(c, 0);
                return;
            }
            if (!f64 && r <= 4 && SupportsTiledKernels && TryFastMatMul(a, b, c, m, n, k, accumulate)) return;
            var batchSizes = cs[..(r - 2)];
            var aBatch = LayoutOf("matmul", batchSizes, a.Strides[..(r - 2)], a.Offset);
            var bBatch = LayoutOf("matmul", batchSizes, b.Strides[..(r - 2)], b.Offset);
            var ast = a.Strides;
            var bst = b.Strides;
            var shape = new MatMulShape
            {
                M = m, N = n, K = k,
                ARowStride = ast[r - 2], AColStride = ast[r - 1], BRowStride = bst[r - 2], BColStride = bst[r - 1],
                Accumulate = accumulate ? 1 : 0,
            };
            switch (a.DType)
            {
                case DType.F64: MatMulTyped<double, F64, double, F64>(a, aBatch, b, bBatch, c, shape); break;
                case DType.F32: MatMulTyped<float, F32, float, F32>(a, aBatch, b, bBatch, c, shape); break;
                case DType.F16: MatMulTyped<ushort, F16, float, F32>(a, aBatch, b, bBatch, c, shape); break;
                case DType.BF16: MatMulTyped<ushort, BF16, float, F32>(a, aBatch, b, bBatch, c, shape); break;
            }
        }
    }

    private void MatMulTyped<TIn, TInE, T, TE>(Tensor a, StridedLayout aBatch, Tensor b, StridedLayout bBatch, Tensor c, MatMulShape shape)
        where TIn : unmanaged where TInE : struct, IElement<TIn> where T : unmanaged, IFloatingPointIeee754<T> where TE : struct, IElement<T>
    {
        Auto(NaiveMatMulKernels.MatMulForwardKernel<TIn, TInE, T, TE>, accelerator.LoadAutoGroupedStreamKernel)(
            c.Numel, Whole<TIn>(a, "matmul"), aBatch, Whole<TIn>(b, "matmul"), bBatch, Dense<T>(c, "matmul"), shape);
    }

    /// <summary>True when the optimised kernels' group shapes fit this accelerator.</summary>
    private bool SupportsTiledKernels => accelerator.WarpSize == 32 && accelerator.MaxNumThreadsPerGroup >= 256;

    /// <summary>c = a @ b through GemmKernels (batch dims folded into at most two levels); false if not applicable.</summary>
    private bool TryFastMatMul(Tensor a, Tensor b, Tensor c, int m, int n, int k, bool accumulate)
    {
        int r = c.Rank;
        var cs = c.Shape;
        int batch0 = r == 4 ? cs[0] : 1, batch1 = r >= 3 ? cs[r - 3] : 1;
        GemmLayout Layout(Tensor t)
        {
            var st = t.Strides;
            return new GemmLayout(t.Offset, st[r - 2], st[r - 1], r == 4 ? st[0] : 0, r >= 3 ? st[r - 3] : 0);
        }
        GemmOperand Operand(Tensor t) => t.DType switch
        {
            DType.F32 => GemmOperand.Float32(Whole<float>(t, "matmul"), Layout(t)),
            DType.F16 => GemmOperand.Bits16(Whole<ushort>(t, "matmul"), GemmElementType.F16, Layout(t)),
            DType.BF16 => GemmOperand.Bits16(Whole<ushort>(t, "matmul"), GemmElementType.BF16, Layout(t)),
            _ => throw new NotSupportedException(t.DType.Name()),
        };
        var args = new GemmArgs(m, n, k, Operand(a), Operand(b), GemmOperand.Float32(Whole<float>(c, "matmul"), Layout(c)), accumulate, batch0, batch1);
        GemmKernels.Launch(accelerator, accelerator.DefaultStream, args);
        return true;
    }

    // ---------------- attention ----------------

    private static AttentionShape CheckAttention(string op, Tensor q, Tensor k, Tensor v, bool causal)
    {
        if (q.Rank != 4 || k.Rank != 4 || !k.Shape.AsSpan().SequenceEqual(v.Shape) || q.Size(0) != k.Size(0) || q.Size(3) != k.Size(3)
            || k.Size(1) == 0 || q.Size(1) % k.Size(1) != 0)
            throw new ArgumentException($"{op}: q {Shapes.Format(q.Shape)}, k {Shapes.Format(k.Shape)}, v {Shapes.Format(v.Shape)} are not q [B, H, T, D] with k, v [B, KVH, S, D] and H a multiple of KVH");
        CheckFloat(q, op);
        CheckSameDType(op, q, k, v);
        return new AttentionShape { B = q.Size(0), H = q.Size(1), KVH = k.Size(1), T = q.Size(2), S = k.Size(2), D = q.Size(3), Causal = causal ? 1 : 0 };
    }

    public void Attention(Tensor q, Tensor k, Tensor v, double scale, bool causal, Tensor o, Tensor lse)
    {
        var s = CheckAttention("attention", q, k, v, causal);
        CheckSameDType("attention", q, o, lse);
        CheckShape("attention", o, q.Shape);
        CheckShape("attention", lse, s.B, s.H, s.T);
        lock (gate)
        {
            if (q.DType == DType.F32) AttentionTyped(q, k, v, (float)scale, s, o, lse);
            else AttentionTyped(q, k, v, scale, s, o, lse);
        }
    }

    private void AttentionTyped<T>(Tensor q, Tensor k, Tensor v, T scale, AttentionShape s, Tensor o, Tensor lse) where T : unmanaged, IFloatingPointIeee754<T>
    {
        const string op = "attention";
        var qv = Dense<T>(q, op);
        var kv = Dense<T>(k, op);
        var vv = Dense<T>(v, op);
        var ov = Dense<T>(o, op);
        var lv = Dense<T>(lse, op);
        int rows = s.B * s.H * s.T;
        if (rows == 0 || s.D == 0 && s.S == 0) return;
        if (typeof(T) == typeof(float) && SupportsTiledKernels && s.D is > 0 and <= FlashAttention.MaxHeadSize)
        {
            var args = new AttentionArgs(s.B, s.H, s.KVH, s.T, s.S, s.D, float.CreateTruncating(scale), s.Causal != 0);
            FlashAttention.Forward(accelerator, accelerator.DefaultStream, args, qv.Cast<float>(), kv.Cast<float>(), vv.Cast<float>(), ov.Cast<float>(), lv.Cast<float>());
            return;
        }
        Auto(NaiveAttentionKernels.AttentionForwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(rows, qv, kv, vv, scale, s, ov, lv);
    }

    public void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dO, double scale, bool causal, Tensor dq, Tensor dk, Tensor dv)
    {
        const string op = "attention backward";
        var s = CheckAttention(op, q, k, v, causal);
        CheckSameDType(op, q, o, lse, dO, dq, dk, dv);
        foreach (var t in new[] { o, dO, dq }) CheckShape(op, t, q.Shape);
        foreach (var t in new[] { dk, dv }) CheckShape(op, t, k.Shape);
        CheckShape(op, lse, s.B, s.H, s.T);
        lock (gate)
        {
            if (q.DType == DType.F32) AttentionBackwardTyped(q, k, v, o, lse, dO, (float)scale, s, dq, dk, dv);
            else AttentionBackwardTyped(q, k, v, o, lse, dO, scale, s, dq, dk, dv);
        }
    }

    private void AttentionBackwardTyped<T>(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dO, T scale, AttentionShape s,
                                           Tensor dq, Tensor dk, Tensor dv) where T : unmanaged, IFloatingPointIeee754<T>
    {
        const string op = "attention backward";
        var qv = Dense<T>(q, op);
        var kv = Dense<T>(k, op);
        var vv = Dense<T>(v, op);
        var ov = Dense<T>(o, op);
        var lv = Dense<T>(lse, op);
        var gv = Dense<T>(dO, op);
        var dqv = Dense<T>(dq, op);
        var dkv = Dense<T>(dk, op);
        var dvv = Dense<T>(dv, op);
        int rows = s.B * s.H * s.T, keys = s.B * s.KVH * s.S;
        if (rows == 0 && keys == 0) return;
        using var delta = (IlgpuStorage)Allocate(q.DType, Math.Max(rows, 1));
        var deltaView = delta.View<T>();
        if (typeof(T) == typeof(float) && SupportsTiledKernels && s.D is > 0 and <= FlashAttention.MaxHeadSize)
        {
            var args = new AttentionArgs(s.B, s.H, s.KVH, s.T, s.S, s.D, float.CreateTruncating(scale), s.Causal != 0);
            FlashAttention.Backward(accelerator, accelerator.DefaultStream, args, qv.Cast<float>(), kv.Cast<float>(), vv.Cast<float>(), ov.Cast<float>(),
                lv.Cast<float>(), gv.Cast<float>(), dqv.Cast<float>(), dkv.Cast<float>(), dvv.Cast<float>(), deltaView.Cast<float>());
            return;
        }
        if (rows > 0)
        {
            Auto(NaiveAttentionKernels.AttentionDeltaBackwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(rows, ov, gv, s.D, deltaView);
            Auto(NaiveAttentionKernels.AttentionQueryBackwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(rows, qv, kv, vv, lv, gv, deltaView, scale, s, dqv);
        }
        if (keys > 0)
            Auto(NaiveAttentionKernels.AttentionKeyValueBackwardKernel<T>, accelerator.LoadAutoGroupedStreamKernel)(keys, qv, kv, vv, lv, gv, deltaView, scale, s, dkv, dvv);
    }
}
