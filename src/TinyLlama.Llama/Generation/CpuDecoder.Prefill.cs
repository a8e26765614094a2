// Prompt processing (prefill) on the decoder's own buffers: T tokens at once through the layers of
// CpuDecoder.cs, with every weight product an integer GEMM over Q4_0 rows repacked in groups of eight
// (RepackedQ4_0.MatMul) and every step on the SpinPool workers. This is how llama.cpp processes a prompt
// on the CPU, and it replaces the module path (LlamaForCausalLM.Forward under integer activations) where
// it applies. What it saves over the modules, which run the same GEMM kernel:
//   - no tensor per op: the modules allocate ~15 MB of fresh activations per layer at T = 512 on the
//     stories15M shape, and the kernel zeroing those pages on first touch was ~15-20% of the time;
//   - one quantization per input: q, k and v read one Q8_0 copy of the normalized x, gate and up another;
//   - one kind of worker: the modules' Parallel.For and the decoder's spinning SpinPool workers took turns
//     on the same cores;
//   - the last layer computes its output projection and MLP for the last token only (llama.cpp's output
//     ids): the other rows would feed logits nobody reads. Keys and values are still cached for every token.
//
// Per layer, for rows t of the chunk at positions p0 + t (rows [first, T) in the last layer):
//   xb = rmsnorm(x (+= tmp)) * attn_norm ; quantize xb              (row job)
//   q, k, v = GEMM(xb8, Wq | Wk | Wv)                                (one GEMM job over the three)
//   rope(q), rope(k); k, v -> cache[layer][:, p0 + t]                (row job)
//   att = causal softmax(q k^T / sqrt(HS)) v per head over the cache  (head x query-block job)
//   quantize att ; tmp = GEMM(att8, Wo)
//   xb = rmsnorm(x += tmp) * mlp_norm ; quantize xb
//   gate, up = GEMM(xb8, Wgate | Wup) ; g = silu(gate) * up ; quantize g
//   tmp = GEMM(g8, Wdown)                                            (added to x by the next row job)
// then logits of the last row through the decoder's head job. The numbers are those of the module path
// under integer activations up to float summation order (tested against it and against token-by-token Step).
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using TinyLlama.Backends.Cpu;

namespace TinyLlama.Generation;

public sealed unsafe partial class CpuDecoder
{
    /// <summary>Most tokens one prefill pass holds (longer prompts run in chunks of this many; tests set it lower).</summary>
    internal int PrefillChunk { get; set; } = 512;

    /// <summary>Queries per attention task.</summary>
    private const int QueryBlock = 16;

    private Prefiller? prefiller;

    /// <summary>
    /// Why <see cref="Prefill"/> does not apply to this model, or null when it does: it needs integer activations
    /// (<see cref="DecoderActivations.Quantized"/>) and every layer projection Q4_0 with rows repacked in groups of
    /// eight, without LoRA.
    /// </summary>
    public string? PrefillUnsupported { get; private set; }

    /// <summary>True when <see cref="Prefill"/> applies (see <see cref="PrefillUnsupported"/>).</summary>
    public bool CanPrefill => PrefillUnsupported is null;

    private string? PrefillReason()
    {
        if (Activations != DecoderActivations.Quantized) return "f32 activations (prefill runs the integer GEMM only)";
        foreach (var l in layers)
            foreach (var p in new[] { l.Q, l.K, l.V, l.O, l.Gate, l.Up, l.Down })
            {
                if (p.Repacked is null) return "a projection is not q4_0 with a multiple of 8 rows";
                if (p.R > 0) return "a projection has a LoRA adapter";
            }
        return null;
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> at positions cache.Length onwards, appends their keys and values to the
    /// cache, and returns the logits [V] after the last one (valid until the next call). Only when
    /// <see cref="CanPrefill"/>; otherwise use the module path.
    /// </summary>
    public ReadOnlySpan<float> Prefill(scoped ReadOnlySpan<int> tokens)
    {
        CheckPrefill(tokens, PrefillUnsupported, "prefill on the CPU decoder");
        var pre = prefiller ??= new Prefiller(this, Math.Min(PrefillChunk, cache.MaxTokens));
        for (int start = 0; start < tokens.Length; start += pre.Capacity)
        {
            int n = Math.Min(pre.Capacity, tokens.Length - start);
            pre.Run(tokens.Slice(start, n), last: start + n == tokens.Length);
        }
        return new ReadOnlySpan<float>(logits, vocab);
    }

    // The chunk buffers and the jobs, made at the first prefill and kept.
    private sealed class Prefiller
    {
        private readonly CpuDecoder d;
        private readonly float[] buffer;
        public readonly float* X, Xb, Q, K, V, Att, G, U, Tmp;   // [T, C], [T, C], [T, QD], [T, KVD] x2, [T, QD], [T, F] x2, [T, C]
        public readonly float* KeysT;                              // this layer's cached keys in blocks of 8, transposed: [NKV, KeyBlocks, HS, 8]
        public readonly int KeyBlocks;
        public readonly Q8_0Rows InC = new(), InQ = new(), InF = new();
        private readonly RowJob rows;
        private readonly GemmJob gemm;
        private readonly AttentionPrefillJob attention;
        public readonly int Capacity, Dim, Qd, Kvd, F, Half;
        public int Count, P0;                                      // tokens in the chunk, position of its first

        public Prefiller(CpuDecoder d, int capacity)
        {
            this.d = d;
            Capacity = capacity;
            var cfg = d.model.Config;
            Dim = d.dim;
            Qd = d.numHeads * d.headDim;
            Kvd = d.numKvHeads * d.headDim;
            F = cfg.IntermediateSize;
            Half = d.headDim / 2;
            KeyBlocks = (d.cache.MaxTokens + 7) / 8;
            long total = (long)capacity * (3L * Dim + 2L * Qd + 2L * Kvd + 2L * F) + (long)d.numKvHeads * KeyBlocks * 8 * d.headDim;
            buffer = GC.AllocateUninitializedArray<float>(checked((int)total), pinned: true);
            float* next = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buffer));
            float* Take(long n) { float* p = next; next += n; return p; }
            X = Take((long)capacity * Dim); Xb = Take((long)capacity * Dim); Tmp = Take((long)capacity * Dim);
            Q = Take((long)capacity * Qd); Att = Take((long)capacity * Qd);
            K = Take((long)capacity * Kvd); V = Take((long)capacity * Kvd);
            G = Take((long)capacity * F); U = Take((long)capacity * F);
            KeysT = Take((long)d.numKvHeads * KeyBlocks * 8 * d.headDim);
            rows = new RowJob(this, d);
            gemm = new GemmJob(d.pool.Threads);
            attention = new AttentionPrefillJob(this, d);
        }

        public void Run(ReadOnlySpan<int> tokens, bool last)
        {
            Count = tokens.Length;
            P0 = d.cache.Length;
            for (int t = 0; t < Count; t++)
            {
                float* row = X + (long)t * Dim;
                if (d.embedBlocks is not null) QuantizedDot.Expand(d.embedType, d.embedBlocks + tokens[t] * d.embedRowBytes, row, Dim);
                else new ReadOnlySpan<float>(d.embed + (long)tokens[t] * Dim, Dim).CopyTo(new Span<float>(row, Dim));
            }
            var layers = d.layers;
            bool pending = false; // tmp holds a product still to be added to x
            for (int li = 0; li < layers.Length; li++)
            {
                var l = layers[li];
                Rows(RowOp.Norm, 0, Count, l.AttnNorm, pending);
                Gemm(0, Count, InC, new(l.Q.Repacked!, Q, Qd), new(l.K.Repacked!, K, Kvd), new(l.V.Repacked!, V, Kvd));
                Rows(RowOp.RopeAndCache, 0, Count, null, false, l);
                // The last layer's outputs feed only the last token's logits; a chunk before the last feeds none.
                int first = li < layers.Length - 1 ? 0 : last ? Count - 1 : Count;
                if (first == Count) { pending = false; break; }
                attention.Set(l, first);
                // Each block of 8 cached keys transposed once per layer, for every query block to read: its "rows" are
                // (kv head, key block) pairs.
                if (attention.Blocked) Rows(RowOp.TransposeKeys, 0, d.numKvHeads * ((P0 + Count + 7) / 8), null, false, l);
                d.pool.Run(attention, attention.Tasks);
                Rows(RowOp.Quantize, first, Count, null, false);
                Gemm(first, Count, InQ, new GemmSlot(l.O.Repacked!, Tmp, Dim));
                Rows(RowOp.Norm, first, Count, l.MlpNorm, true);
                Gemm(first, Count, InC, new(l.Gate.Repacked!, G, F), new(l.Up.Repacked!, U, F));
                Rows(RowOp.SwiGlu, first, Count, null, false);
                Gemm(first, Count, InF, new GemmSlot(l.Down.Repacked!, Tmp, Dim));
                pending = true;
            }
            d.cache.Length = P0 + Count;
            if (!last) return;
            // Logits of the last token through the decoder's own head job.
            float* x = X + (long)(Count - 1) * Dim, tmp = Tmp + (long)(Count - 1) * Dim;
            if (pending) TensorPrimitives.Add(new ReadOnlySpan<float>(x, Dim), new ReadOnlySpan<float>(tmp, Dim), new Span<float>(x, Dim));
            RmsNorm(d.xb, x, d.finalNorm, Dim, d.eps);
            d.Run(d.headJob);
        }

        private void Rows(RowOp op, int first, int end, float* norm, bool addTmp, Layer? layer = null)
        {
            rows.Op = op;
            rows.First = first;
            rows.End = end;
            rows.Norm = norm;
            rows.AddTmp = addTmp;
            rows.Layer = layer;
            int width = op switch { RowOp.Norm => Dim, RowOp.Quantize => Qd, RowOp.SwiGlu => F, _ => 0 };
            rows.Target = op switch { RowOp.Norm => InC, RowOp.Quantize => InQ, RowOp.SwiGlu => InF, _ => null };
            rows.Target?.Prepare(end - first, width);
            rows.Tasks = Math.Min(end - first, 4 * d.pool.Threads);
            d.pool.Run(rows, rows.Tasks);
        }

        private void Gemm(int first, int end, Q8_0Rows x, params GemmSlot[] slots)
        {
            gemm.Set(x, first, slots);
            d.pool.Run(gemm, gemm.Tasks);
        }
    }

    private enum RowOp { Norm, RopeAndCache, Quantize, SwiGlu, TransposeKeys }

    // Row-wise steps over rows [First, End) of the chunk, cut into Tasks ranges; the quantized rows go to Target
    // at indices row - First.
    private sealed class RowJob(Prefiller s, CpuDecoder d) : IPoolJob
    {
        [ThreadStatic] private static float[]? swiglu;
        public RowOp Op;
        public int First, End, Tasks;
        public float* Norm;
        public bool AddTmp;
        public Layer? Layer;
        public Q8_0Rows? Target;

        public void Execute(int task)
        {
            int n = End - First, r0 = First + (int)((long)n * task / Tasks), r1 = First + (int)((long)n * (task + 1) / Tasks);
            switch (Op)
            {
                case RowOp.Norm:
                    for (int r = r0; r < r1; r++)
                    {
                        float* x = s.X + (long)r * s.Dim;
                        if (AddTmp) TensorPrimitives.Add(new ReadOnlySpan<float>(x, s.Dim), new ReadOnlySpan<float>(s.Tmp + (long)r * s.Dim, s.Dim), new Span<float>(x, s.Dim));
                        RmsNorm(s.Xb + (long)r * s.Dim, x, Norm, s.Dim, d.eps);
                    }
                    Target!.QuantizeRows(s.Xb + (long)First * s.Dim, s.Dim, r0 - First, r1 - First);
                    break;
                case RowOp.Quantize:
                    Target!.QuantizeRows(s.Att + (long)First * s.Qd, s.Qd, r0 - First, r1 - First);
                    break;
                case RowOp.SwiGlu:
                    // g = silu(g) * u = sigmoid(g) * g * u, vectorized (a scalar exp per value cost more than the GEMM's row).
                    var sig = swiglu is { } held && held.Length >= s.F ? held : swiglu = new float[s.F];
                    for (int r = r0; r < r1; r++)
                        SwiGlu(new Span<float>(s.G + (long)r * s.F, s.F), new ReadOnlySpan<float>(s.U + (long)r * s.F, s.F), sig.AsSpan(0, s.F));
                    Target!.QuantizeRows(s.G + (long)First * s.F, s.F, r0 - First, r1 - First);
                    break;
                case RowOp.TransposeKeys:
                    // Rows here are (kv head, block of 8 keys) pairs; keys past the sequence read as zeros.
                    int seq = s.P0 + s.Count, perHead = (seq + 7) / 8, hsT = d.headDim, maxKeys = d.cache.MaxTokens;
                    for (int r = r0; r < r1; r++)
                    {
                        int g = r / perHead, kb = r % perHead, count = Math.Min(8, seq - 8 * kb);
                        float* src = Layer!.SlotKeys[d.bound] + ((long)g * maxKeys + 8L * kb) * hsT;
                        float* dst = s.KeysT + ((long)g * s.KeyBlocks + kb) * 8 * hsT;
                        for (int i = 0; i < 8; i++)
                        {
                            if (i < count)
                                for (int j = 0; j < hsT; j++) dst[j * 8 + i] = src[(long)i * hsT + j];
                            else
                                for (int j = 0; j < hsT; j++) dst[j * 8 + i] = 0f;
                        }
                    }
                    break;
                case RowOp.RopeAndCache:
                    int hs = d.headDim, maxT = d.cache.MaxTokens;
                    for (int r = r0; r < r1; r++)
                    {
                        int pos = s.P0 + r;
                        float* cos = d.ropeCos + (long)pos * s.Half, sin = d.ropeSin + (long)pos * s.Half;
                        float* q = s.Q + (long)r * s.Qd, k = s.K + (long)r * s.Kvd, v = s.V + (long)r * s.Kvd;
                        for (int h = 0; h < d.numHeads; h++) Rope(q + h * hs, cos, sin, hs);
                        for (int g = 0; g < d.numKvHeads; g++)
                        {
                            Rope(k + g * hs, cos, sin, hs);
                            new ReadOnlySpan<float>(k + g * hs, hs).CopyTo(new Span<float>(Layer!.SlotKeys[d.bound] + ((long)g * maxT + pos) * hs, hs));
                            new ReadOnlySpan<float>(v + g * hs, hs).CopyTo(new Span<float>(Layer.SlotValues[d.bound] + ((long)g * maxT + pos) * hs, hs));
                        }
                    }
                    break;
            }
        }
    }

    // One weight of a GEMM job: y [rows, Out] (row stride Ldy) = x W^T over groups [G0, G1).
    private readonly struct GemmSlot(RepackedQ4_0 w, float* y, long ldy, int g0 = 0, int g1 = 0)
    {
        public readonly RepackedQ4_0 W = w;
        public readonly float* Y = y;
        public readonly long Ldy = ldy;
        public readonly int G0 = g0, G1 = g1;
    }

    // Integer GEMMs of one quantized input against several repacked weights, cut into pieces of whole groups.
    private sealed class GemmJob(int threads) : IPoolJob
    {
        private readonly List<GemmSlot> pieces = [];
        private Q8_0Rows x = null!;

        public int Tasks => pieces.Count;

        public void Set(Q8_0Rows input, int firstRow, GemmSlot[] slots)
        {
            x = input;
            pieces.Clear();
            long total = 0;
            foreach (var s in slots) total += s.W.Groups;
            foreach (var s in slots)
            {
                // About four pieces per thread over all slots, each of whole groups.
                int groups = s.W.Groups, count = (int)Math.Clamp((4L * threads * groups + total - 1) / total, 1, groups);
                for (int i = 0; i < count; i++)
                {
                    int g0 = (int)((long)groups * i / count), g1 = (int)((long)groups * (i + 1) / count);
                    if (g1 > g0) pieces.Add(new GemmSlot(s.W, s.Y + firstRow * s.Ldy, s.Ldy, g0, g1));
                }
            }
        }

        public void Execute(int task)
        {
            var p = pieces[task];
            p.W.MatMul(x, p.Y, p.Ldy, p.G0, p.G1);
        }
    }

    // Causal attention of query rows [first, Count) over the cache, one task per (head, block of QueryBlock queries).
    //
    // A block's queries share every load of a key and a value (the per-query loop streamed the head's keys and
    // values from L2 once per query, and that traffic, not the flops, set its speed):
    //   scores: keys are transposed once per layer in blocks of eight, kt [HS, 8] (Prefiller.KeysT), and four
    //     queries at once take sum_j q[j] * kt[j] with broadcasts: eight scores per vector, no horizontal sums;
    //   softmax per query over its own positions (later keys of the block get probability 0: the causal mask);
    //   output: four queries at once accumulate p[t] * v[t] sixteen columns at a time in eight registers.
    // Head sizes that are not a multiple of 8 (or a CPU without 256-bit vectors) take one query at a time.
    private sealed class AttentionPrefillJob(Prefiller s, CpuDecoder d) : IPoolJob
    {
        [ThreadStatic] private static float[]? scratch;
        private Layer layer = null!;
        private int first, blocks;

        public int Tasks => d.numHeads * blocks;

        /// <summary>True when the block kernels run (they read the transposed keys, <see cref="Prefiller.KeysT"/>).</summary>
        public bool Blocked => Vector256.IsHardwareAccelerated && d.headDim % 8 == 0;

        public void Set(Layer l, int firstRow)
        {
            layer = l;
            first = firstRow;
            blocks = (s.Count - first + QueryBlock - 1) / QueryBlock;
        }

        public void Execute(int task)
        {
            int h = task % d.numHeads, b = task / d.numHeads;
            int hs = d.headDim, maxT = d.cache.MaxTokens, g = h / (d.numHeads / d.numKvHeads);
            float* keys = layer.SlotKeys[d.bound] + (long)g * maxT * hs, values = layer.SlotValues[d.bound] + (long)g * maxT * hs;
            float scale = 1f / MathF.Sqrt(hs);
            int r0 = first + b * QueryBlock, r1 = Math.Min(s.Count, r0 + QueryBlock);
            int n = s.P0 + r1, stride = (n + 7) & ~7;            // keys the block's last query sees, rounded up to 8
            bool blocked = Blocked;
            long need = blocked ? (long)QueryBlock * stride + hs : maxT;
            var buffer = scratch is { } held && held.Length >= need ? held : scratch = new float[need];
            fixed (float* scratchBase = buffer)
            {
                if (!blocked)
                {
                    for (int r = r0; r < r1; r++)
                    {
                        int positions = s.P0 + r + 1;
                        float* q = s.Q + (long)r * s.Qd + h * hs, o = s.Att + (long)r * s.Qd + h * hs;
                        for (int t = 0; t < positions; t++) scratchBase[t] = Dot(q, keys + (long)t * hs, hs);
                        float norm = Softmax(scratchBase, positions, positions, scale);
                        new Span<float>(o, hs).Clear();
                        for (int t = 0; t < positions; t++) Axpy(o, scratchBase[t] * norm, values + (long)t * hs, hs);
                    }
                    return;
                }
                float* scores = scratchBase, dummy = scores + (long)QueryBlock * stride;
                float* keysT = s.KeysT + (long)g * s.KeyBlocks * 8 * hs;
                float* inv = stackalloc float[QueryBlock];
                // Query a of the block (a past the block's end repeats its last query into a dummy output).
                float* Query(int a) => s.Q + (long)Math.Min(r0 + a, r1 - 1) * s.Qd + h * hs;
                float* Row(int a) => scores + (long)Math.Min(a, r1 - r0 - 1) * stride;
                float* Out(int a) => r0 + a < r1 ? s.Att + (long)(r0 + a) * s.Qd + h * hs : dummy;
                for (int k0 = 0; k0 < n; k0 += 8)
                {
                    float* kt = keysT + (long)k0 * hs; // block k0 / 8: [HS, 8]
                    for (int a = 0; a < r1 - r0; a += 4)
                        Scores4(kt, hs, Query(a), Query(a + 1), Query(a + 2), Query(a + 3),
                            Row(a) + k0, Row(a + 1) + k0, Row(a + 2) + k0, Row(a + 3) + k0);
                }
                for (int a = 0; a < r1 - r0; a++)
                    inv[a] = Softmax(scores + (long)a * stride, s.P0 + r0 + a + 1, n, scale);
                for (int a = 0; a < r1 - r0; a += 4)
                    Output4(values, hs, n, Row(a), Row(a + 1), Row(a + 2), Row(a + 3),
                        inv[a], inv[Math.Min(a + 1, r1 - r0 - 1)], inv[Math.Min(a + 2, r1 - r0 - 1)], inv[Math.Min(a + 3, r1 - r0 - 1)],
                        Out(a), Out(a + 1), Out(a + 2), Out(a + 3));
            }
        }

        // p[0..valid) = exp(scale (x - max)), p[valid..n) = 0 (keys after the query's position); returns 1 / sum.
        private static float Softmax(float* x, int valid, int n, float scale)
        {
            var sc = new Span<float>(x, valid);
            float max = TensorPrimitives.Max(sc);
            TensorPrimitives.Subtract(sc, max, sc);
            TensorPrimitives.Multiply(sc, scale, sc);
            TensorPrimitives.Exp(sc, sc);
            new Span<float>(x + valid, n - valid).Clear();
            return 1f / TensorPrimitives.Sum(sc);
        }

        // s_i[0..8) = sum_j q_i[j] kt[j, 0..8) for four queries: two accumulators each (even and odd j), eight chains.
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void Scores4(float* kt, int hs, float* q0, float* q1, float* q2, float* q3, float* s0, float* s1, float* s2, float* s3)
        {
            Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int j = 0; j < hs; j += 2)
            {
                var k = Vector256.Load(kt + 8 * j);
                var l = Vector256.Load(kt + 8 * j + 8);
                a0 = Vector256.FusedMultiplyAdd(Vector256.Create(q0[j]), k, a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Create(q1[j]), k, a1);
                a2 = Vector256.FusedMultiplyAdd(Vector256.Create(q2[j]), k, a2);
                a3 = Vector256.FusedMultiplyAdd(Vector256.Create(q3[j]), k, a3);
                b0 = Vector256.FusedMultiplyAdd(Vector256.Create(q0[j + 1]), l, b0);
                b1 = Vector256.FusedMultiplyAdd(Vector256.Create(q1[j + 1]), l, b1);
                b2 = Vector256.FusedMultiplyAdd(Vector256.Create(q2[j + 1]), l, b2);
                b3 = Vector256.FusedMultiplyAdd(Vector256.Create(q3[j + 1]), l, b3);
            }
            Vector256.Store(a0 + b0, s0);
            Vector256.Store(a1 + b1, s1);
            Vector256.Store(a2 + b2, s2);
            Vector256.Store(a3 + b3, s3);
        }

        // o_i = inv_i sum_{t < n} p_i[t] v[t] for four queries, sixteen columns (eight at the end) at a time.
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void Output4(float* v, int hs, int n, float* p0, float* p1, float* p2, float* p3,
            float i0, float i1, float i2, float i3, float* o0, float* o1, float* o2, float* o3)
        {
            int c = 0;
            for (; c + 16 <= hs; c += 16)
            {
                Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                float* vt = v + c;
                for (int t = 0; t < n; t++, vt += hs)
                {
                    var x = Vector256.Load(vt);
                    var y = Vector256.Load(vt + 8);
                    var w0 = Vector256.Create(p0[t]);
                    var w1 = Vector256.Create(p1[t]);
                    var w2 = Vector256.Create(p2[t]);
                    var w3 = Vector256.Create(p3[t]);
                    a0 = Vector256.FusedMultiplyAdd(w0, x, a0);
                    b0 = Vector256.FusedMultiplyAdd(w0, y, b0);
                    a1 = Vector256.FusedMultiplyAdd(w1, x, a1);
                    b1 = Vector256.FusedMultiplyAdd(w1, y, b1);
                    a2 = Vector256.FusedMultiplyAdd(w2, x, a2);
                    b2 = Vector256.FusedMultiplyAdd(w2, y, b2);
                    a3 = Vector256.FusedMultiplyAdd(w3, x, a3);
                    b3 = Vector256.FusedMultiplyAdd(w3, y, b3);
                }
                Vector256.Store(a0 * i0, o0 + c); Vector256.Store(b0 * i0, o0 + c + 8);
                Vector256.Store(a1 * i1, o1 + c); Vector256.Store(b1 * i1, o1 + c + 8);
                Vector256.Store(a2 * i2, o2 + c); Vector256.Store(b2 * i2, o2 + c + 8);
                Vector256.Store(a3 * i3, o3 + c); Vector256.Store(b3 * i3, o3 + c + 8);
            }
            if (c < hs)
            {
                Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0;
                float* vt = v + c;
                for (int t = 0; t < n; t++, vt += hs)
                {
                    var x = Vector256.Load(vt);
                    a0 = Vector256.FusedMultiplyAdd(Vector256.Create(p0[t]), x, a0);
                    a1 = Vector256.FusedMultiplyAdd(Vector256.Create(p1[t]), x, a1);
                    a2 = Vector256.FusedMultiplyAdd(Vector256.Create(p2[t]), x, a2);
                    a3 = Vector256.FusedMultiplyAdd(Vector256.Create(p3[t]), x, a3);
                }
                Vector256.Store(a0 * i0, o0 + c);
                Vector256.Store(a1 * i1, o1 + c);
                Vector256.Store(a2 * i2, o2 + c);
                Vector256.Store(a3 * i3, o3 + c);
            }
        }
    }
}
