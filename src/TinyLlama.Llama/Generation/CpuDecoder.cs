// One-token decoding on the CPU, written the way llama2.c's run.c writes its forward pass: the same
// math as LlamaForCausalLM.Forward with a KvCache (Llama.cs), but over raw f32 buffers allocated once,
// with no tensors, no autograd and no allocation per token, and with every matrix-vector product
// spread over SpinPool workers that stay awake between the ~5 products of a layer.
//
// Why a second forward pass: decoding one token does ~2 flops per weight and reads every weight once,
// so it is bound by memory bandwidth (stories15M streams 58 MB of f32 weights per token). The module
// path adds, per op, a tensor allocation, autograd bookkeeping and a Parallel.For wake-up (~100 ops a
// token); at ~1 ms per token those overheads are most of the time. Prefill (many tokens at once) is
// compute-bound: Q4_0 models run it as an integer GEMM (CpuDecoder.Prefill.cs), other models as multi-row
// steps over the prompt's tokens (PrefillRows, CpuDecoder.Batch.cs), each weight read once per chunk of rows.
//
// Per layer, for x [C] at position pos (S = pos + 1 cached positions):
//   xb = rmsnorm(x) * attn_norm                     [C]
//   q, k, v = Wq xb, Wk xb, Wv xb                   [NH*HS], [NKV*HS], [NKV*HS]  (one parallel job)
//   rope(q), rope(k) (rotate-half, HF layout); k, v -> cache[layer][:, pos]
//   att_h = softmax(q_h . K_g[0..S) / sqrt(HS)) V_g  for head h, kv group g = h / (NH / NKV)
//   x += Wo att                                     [C]
//   xb = rmsnorm(x) * mlp_norm
//   h = silu(W_gate xb) * (W_up xb)                 [F]      (one job: both products and the gate)
//   x += W_down h
// logits = W_head rmsnorm(x) * norm                  [V]
// A LoRA adapter on a projection adds s * B (A xb): u = A xb (r values) first, then s * dot(B[row], u)
// joins each output row, so the merged weight is never formed.
//
// A decoder made over several caches (slots, CpuDecoder.Batch.cs) runs the same steps over n rows at once,
// one token per slot: every activation buffer holds S rows, each product job runs over the n rows, attention
// runs per (row, head) over that row's slot. A lone Step is the case n = 1 of the same code. Rows of one slot
// take its next positions in order (a prompt prefilled as rows): every row's keys and values are cached before
// any row attends, so each row sees exactly the positions a lone Step would.
//
// Block-quantized weights (GGUF q4_0/q8_0, llama.cpp's Q4_K_M/Q6_K: QuantizedLinear, QuantizedEmbedding)
// stay in their blocks: the token's embedding row is expanded alone, and a tied head multiplies by the
// embedding's blocks. Decoding is bandwidth-bound, so reading 0.56 bytes per weight (Q4_0) instead of 4 is
// where the speed comes from; the products are done one of two ways (DecoderActivations):
//   Quantized (the default, llama.cpp's way): each mat-vec's input is quantized once to Q8_0 (Q8_K for the
//     K-quants) and every row is an integer dot product with one scale multiply per block
//     (Backends/Cpu/IntegerRows.cs); about twice as fast, at the cost of the activations' 8-bit rounding
//     (the same rounding llama.cpp applies). Q4_0 matrices run on their rows repacked in groups of eight
//     (Backends/Cpu/RepackedQ4_0.cs, made once per weight tensor), eight rows per instruction sequence.
//   Float32: each row is QuantizedDot.Row, the CPU backend's own mat-vec kernel on f32 activations, so every
//     row equals the module path's bit for bit (what the tests against the module path use).
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TinyLlama.Backends.Cpu;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Generation;

/// <summary>How <see cref="CpuDecoder"/> multiplies block-quantized weights (see its file header).</summary>
public enum DecoderActivations
{
    /// <summary>Activations quantized to Q8_0 / Q8_K once per mat-vec, integer dot products (llama.cpp's way).</summary>
    Quantized,
    /// <summary>f32 activations, rows equal to the module path's bit for bit.</summary>
    Float32,
}

/// <summary>
/// A llama2.c-style single-token forward pass on the CPU that shares the model's weights and KV cache
/// (see the file header). Create one per generation with <see cref="TryCreate"/>; it pins the weights
/// until disposed.
/// </summary>
public sealed unsafe partial class CpuDecoder : IDisposable
{
    // A matrix-vector product y[Out] (=|+=) W[Out, In] x[In], with an optional LoRA term. W is either f32
    // (W) or Out rows of RowBytes bytes of Type's blocks (Blocks, when not null).
    private sealed class Projection
    {
        public float* W;
        public byte* Blocks;
        public RepackedQ4_0? Repacked; // Q4_0 rows in groups of 8 for the integer rows (RepackedQ4_0.cs), or null
        public QuantType Type;
        public long RowBytes;
        public int Out, In;
        public float* LoraA, LoraB, U; // A [R, In], B [Out, R], u = A x [R]
        public int R;
        public float Scale;
    }

    private sealed class Layer
    {
        public float* AttnNorm, MlpNorm;                      // norms [C]
        public float*[] SlotKeys = null!, SlotValues = null!; // every slot's cache (NKV, maxTokens, HS)
        public Projection Q = null!, K = null!, V = null!, O = null!, Gate = null!, Up = null!, Down = null!;
    }

    // One parallel job: rows of several projections, cut into chunks (task i = chunk i), for Count input rows
    // (one per sequence of the step: row i of projection s reads inputs[s] + i * In, writes outputs[s] + i * Out).
    private sealed class MatVecJob : IPoolJob
    {
        private readonly (Projection P, int R0, int R1, int Slot)[] chunks;
        private readonly float*[] inputs, outputs;
        private readonly bool accumulate, swiglu;
        private readonly QuantizedActivations[]? acts;     // each input row quantized once per run, or null
        private readonly bool actsQ8_0, actsQ8K;            // the forms the slots' rows read

        // slots: the projections this job runs, each reading inputs[slot] and writing outputs[slot].
        // swiglu: slots 0 and 1 are gate and up; each chunk then overwrites outputs[0] rows with
        // silu(gate) * up for the rows it computed (both products of a row are in the same chunk).
        // acts: the shared activation buffers (one per input row) for this input width when the integer rows are
        // on (every slot of a job reads the same input, inputs[0]), or null.
        public MatVecJob(Projection[] slots, float*[] inputs, float*[] outputs, bool accumulate, bool swiglu, int threads, QuantizedActivations[]? acts = null)
        {
            foreach (var p in slots)
            {
                if (p.Blocks is null || !IntegerRows.Supports(p.Type)) continue;
                if (IntegerRows.UsesQ8K(p.Type)) actsQ8K = true;
                else actsQ8_0 = true;
            }
            this.acts = actsQ8_0 || actsQ8K ? acts : null;
            this.inputs = inputs;
            this.outputs = outputs;
            this.accumulate = accumulate;
            this.swiglu = swiglu;
            var list = new List<(Projection, int, int, int)>();
            if (swiglu)
            {
                foreach (var (r0, r1) in Cut(slots[0].Out, 2L * slots[0].In, threads, Alignment(slots[0])))
                    list.Add((slots[0], r0, r1, 0));
            }
            else
            {
                for (int s = 0; s < slots.Length; s++)
                    foreach (var (r0, r1) in Cut(slots[s].Out, slots[s].In, threads, Alignment(slots[s])))
                        list.Add((slots[s], r0, r1, s));
            }
            chunks = list.ToArray();
            Slots = slots;
        }

        public Projection[] Slots { get; }
        public int Tasks => chunks.Length;
        public float* Input(int slot) => inputs[slot];

        /// <summary>Input rows of the next run (1 for a lone step).</summary>
        public int Count { get; set; } = 1;

        /// <summary>Hands the chunks out last to first (the head alternates, see Decode).</summary>
        public bool Backward { get; set; }

        /// <summary>
        /// When set (by the head's greedy steps, sized chunks x rows), each chunk also leaves, for every input row i,
        /// the greedy index of its output rows in Argmax[chunk * Count + i] (Sampler.GreedyIndex, as an output row
        /// number; -1 for a NaN or an infinity), read while the chunk's outputs are still in this core's cache.
        /// </summary>
        public int[]? Argmax { get; set; }

        /// <summary>Chunks of a run (the parts Argmax holds per input row).</summary>
        public int ChunkCount => chunks.Length;

        /// <summary>Quantizes the input rows for the integer rows (before the rows run).</summary>
        public void QuantizeInput()
        {
            if (acts is null) return;
            for (int i = 0; i < Count; i++) acts[i].Quantize(inputs[0] + (long)i * Slots[0].In, actsQ8_0, actsQ8K);
        }

        public void Execute(int task)
        {
            int c = Backward ? chunks.Length - 1 - task : task;
            var (p, r0, r1, slot) = chunks[c];
            if (!swiglu)
            {
                Rows(p, inputs[slot], outputs[slot], r0, r1, accumulate, acts, Count);
                if (Argmax is { } argmax)
                    for (int i = 0; i < Count; i++)
                    {
                        int best = Sampler.GreedyIndex(new ReadOnlySpan<float>(outputs[slot] + (long)i * p.Out + r0, r1 - r0));
                        argmax[c * Count + i] = best < 0 ? -1 : r0 + best;
                    }
                return;
            }
            Rows(Slots[0], inputs[0], outputs[0], r0, r1, false, acts, Count);
            Rows(Slots[1], inputs[1], outputs[1], r0, r1, false, acts, Count);
            // A scalar exp per value cost about as much as the products at eight rows and more (a prefill's rows).
            Span<float> scratch = stackalloc float[256];
            for (int row = 0; row < Count; row++)
            {
                float* g = outputs[0] + (long)row * Slots[0].Out, u = outputs[1] + (long)row * Slots[1].Out;
                SwiGlu(new Span<float>(g + r0, r1 - r0), new ReadOnlySpan<float>(u + r0, r1 - r0), scratch);
            }
        }

        // Repacked rows run in whole groups of 8.
        private int Alignment(Projection p) => acts is not null && p.Repacked is not null ? RepackedQ4_0.GroupRows : 1;

        // Row ranges of about equal weight bytes, several per thread (load balance), starting at multiples of align.
        private static IEnumerable<(int, int)> Cut(int rows, long rowCost, int threads, int align)
        {
            const long MinChunkCost = 16 * 1024; // floats: below this a chunk is not worth a hand-off
            int pieces = (int)Math.Clamp(rows * rowCost / MinChunkCost, 1, threads * 8L);
            // A whole number of pieces per thread: five equal pieces on two threads keep one thread busy for a third
            // of a piece's time after the other is done (the 288 x 288 projections of the stories15M shape).
            if (pieces > 1) pieces = (pieces + threads - 1) / threads * threads;
            int step = ((rows + pieces - 1) / pieces + align - 1) / align * align;
            for (int r = 0; r < rows; r += step) yield return (r, Math.Min(rows, r + step));
        }
    }

    // g = silu(g) * u = (sigmoid(g) g) u in place, vectorised in pieces of scratch's length, with the operations of the
    // modules (CpuBackend.SwiGlu). The rows job (MatVecJob) and the Q4_0 prefill (Prefiller) both gate through it.
    internal static void SwiGlu(Span<float> g, ReadOnlySpan<float> u, Span<float> scratch)
    {
        for (int i = 0; i < g.Length; i += scratch.Length)
        {
            int len = Math.Min(scratch.Length, g.Length - i);
            var gs = g.Slice(i, len);
            var t = scratch[..len];
            System.Numerics.Tensors.TensorPrimitives.Sigmoid(gs, t);
            System.Numerics.Tensors.TensorPrimitives.Multiply(t, gs, t);
            System.Numerics.Tensors.TensorPrimitives.Multiply(t, u.Slice(i, len), gs);
        }
    }

    // Attention of one query head of one row over its slot's cached positions (task = row * NH + head).
    //
    // A head is a few dozen floats (stories15M: 48), so per cached position the arithmetic is small and the
    // overheads decide: a horizontal sum per dot product, and a running output summed through memory. With AVX
    // and whole 8-float vectors (Blocked), the scores go eight positions at a time: eight accumulators, one per
    // position, over the head's vectors, then one transposing reduction (HorizontalAdd) gives the eight dots in
    // one vector; and the weighted sum of the values keeps the output in registers, up to four vectors per pass
    // over the positions. Each score is reduced in the same order in a block of eight and alone (Reduce), so a
    // position's score does not depend on which block it falls in; the values are summed in position order, one
    // FMA per position and element, as before. Elsewhere, one position at a time (TensorPrimitives).
    private sealed class AttentionJob(CpuDecoder d) : IPoolJob
    {
        public readonly float*[] KeysCache = new float*[d.rowSlot.Length], ValuesCache = new float*[d.rowSlot.Length];
        public readonly int[] Positions = new int[d.rowSlot.Length];

        private static bool Blocked(int hs) => Avx.IsSupported && Fma.IsSupported && hs % 8 == 0;

        public void Execute(int task)
        {
            int row = task / d.numHeads, h = task % d.numHeads;
            int hs = d.headDim, maxT = d.cache.MaxTokens, s = Positions[row], qd = d.numHeads * hs;
            int g = h / (d.numHeads / d.numKvHeads);
            float* q = d.q + (long)row * qd + h * hs, o = d.att + (long)row * qd + h * hs, scores = d.scores + ((long)row * d.numHeads + h) * maxT;
            float* k = KeysCache[row] + (long)g * maxT * hs, v = ValuesCache[row] + (long)g * maxT * hs;
            float scale = 1f / MathF.Sqrt(hs);
            float max = Blocked(hs) ? Scores(q, k, hs, s, scale, scores) : ScoresOneByOne(q, k, hs, s, scale, scores);
            // softmax: the exponentials in one vectorised pass over the positions.
            var e = new Span<float>(scores, s);
            System.Numerics.Tensors.TensorPrimitives.Subtract(e, max, e);
            System.Numerics.Tensors.TensorPrimitives.Exp(e, e);
            float inv = 1f / System.Numerics.Tensors.TensorPrimitives.Sum(e);
            if (Blocked(hs))
            {
                int c = 0;
                for (; hs - c >= 32; c += 32) Values4(scores, inv, v + c, hs, s, o + c);
                for (; c < hs; c += 8) Values1(scores, inv, v + c, hs, s, o + c);
            }
            else
            {
                new Span<float>(o, hs).Clear();
                for (int t = 0; t < s; t++) Axpy(o, scores[t] * inv, v + (long)t * hs, hs);
            }
        }

        // scores[t] = (q . k_t) * scale for t < s; returns the largest.
        private static float ScoresOneByOne(float* q, float* k, int hs, int s, float scale, float* scores)
        {
            float max = float.NegativeInfinity;
            for (int t = 0; t < s; t++)
            {
                float dot = Dot(q, k + (long)t * hs, hs) * scale;
                scores[t] = dot;
                if (dot > max) max = dot;
            }
            return max;
        }

        // As ScoresOneByOne, eight positions per block (hs a multiple of 8, AVX and FMA).
        private static float Scores(float* q, float* k, int hs, int s, float scale, float* scores)
        {
            var vs = Vector256.Create(scale);
            var vmax = Vector256.Create(float.NegativeInfinity);
            int t = 0;
            for (; s - t >= 8; t += 8)
            {
                float* kt = k + (long)t * hs;
                Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
                for (int p = 0; p < hs; p += 8)
                {
                    var qv = Vector256.Load(q + p);
                    a0 = Fma.MultiplyAdd(qv, Vector256.Load(kt + p), a0);
                    a1 = Fma.MultiplyAdd(qv, Vector256.Load(kt + hs + p), a1);
                    a2 = Fma.MultiplyAdd(qv, Vector256.Load(kt + 2 * hs + p), a2);
                    a3 = Fma.MultiplyAdd(qv, Vector256.Load(kt + 3 * hs + p), a3);
                    a4 = Fma.MultiplyAdd(qv, Vector256.Load(kt + 4 * hs + p), a4);
                    a5 = Fma.MultiplyAdd(qv, Vector256.Load(kt + 5 * hs + p), a5);
                    a6 = Fma.MultiplyAdd(qv, Vector256.Load(kt + 6 * hs + p), a6);
                    a7 = Fma.MultiplyAdd(qv, Vector256.Load(kt + 7 * hs + p), a7);
                }
                // Lane j of the result is the sum of a_j's lanes as Reduce adds them: pairs, then pairs of pairs
                // within each 128-bit half, then the two halves.
                var h0123 = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
                var h4567 = Avx.HorizontalAdd(Avx.HorizontalAdd(a4, a5), Avx.HorizontalAdd(a6, a7));
                var dots = (Avx.Permute2x128(h0123, h4567, 0x20) + Avx.Permute2x128(h0123, h4567, 0x31)) * vs;
                Vector256.Store(dots, scores + t);
                vmax = Avx.Max(vmax, dots);
            }
            float max = float.NegativeInfinity;
            for (int j = 0; j < 8; j++) if (vmax.GetElement(j) > max) max = vmax.GetElement(j);
            for (; t < s; t++)
            {
                float* kt = k + (long)t * hs;
                var a = Vector256<float>.Zero;
                for (int p = 0; p < hs; p += 8) a = Fma.MultiplyAdd(Vector256.Load(q + p), Vector256.Load(kt + p), a);
                float dot = Reduce(a) * scale;
                scores[t] = dot;
                if (dot > max) max = dot;
            }
            return max;
        }

        // The lanes of a summed as Scores' block reduction sums each accumulator.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static float Reduce(Vector256<float> a)
        {
            var h = Avx.HorizontalAdd(Avx.HorizontalAdd(a, a), a);
            return h.GetElement(0) + h.GetElement(4);
        }

        // o[0..32) = sum over t < s of (scores[t] inv) v_t[0..32) (v_t = v + t ld), in position order, in registers.
        private static void Values4(float* scores, float inv, float* v, int ld, int s, float* o)
        {
            Vector256<float> o0 = Vector256<float>.Zero, o1 = o0, o2 = o0, o3 = o0;
            for (int t = 0; t < s; t++)
            {
                var w = Vector256.Create(scores[t] * inv);
                float* vt = v + (long)t * ld;
                o0 = Fma.MultiplyAdd(w, Vector256.Load(vt), o0);
                o1 = Fma.MultiplyAdd(w, Vector256.Load(vt + 8), o1);
                o2 = Fma.MultiplyAdd(w, Vector256.Load(vt + 16), o2);
                o3 = Fma.MultiplyAdd(w, Vector256.Load(vt + 24), o3);
            }
            Vector256.Store(o0, o);
            Vector256.Store(o1, o + 8);
            Vector256.Store(o2, o + 16);
            Vector256.Store(o3, o + 24);
        }

        // As Values4 over 8 floats.
        private static void Values1(float* scores, float inv, float* v, int ld, int s, float* o)
        {
            var o0 = Vector256<float>.Zero;
            for (int t = 0; t < s; t++) o0 = Fma.MultiplyAdd(Vector256.Create(scores[t] * inv), Vector256.Load(v + (long)t * ld), o0);
            Vector256.Store(o0, o);
        }
    }

    private readonly LlamaForCausalLM model;
    private readonly KvCache[] caches;          // one per slot (a lone decoder has one)
    private KvCache cache;                      // the slot Step and Prefill run on (Bind)
    private int bound;
    private readonly SpinPool pool;
    private readonly List<MemoryHandle> pins = [];
    private readonly Layer[] layers;
    private readonly float* embed, finalNorm;   // embed [V, C] when the table is f32, else null
    private readonly byte* embedBlocks;          // the table as blocks [V, embedRowBytes] when quantized
    private readonly QuantType embedType;
    private readonly long embedRowBytes;
    private readonly Projection head;
    private readonly int dim, numHeads, numKvHeads, headDim, vocab;
    private readonly float eps;
    private readonly double[] invFreq;
    private readonly float[] buffer;            // every activation below, in one pinned array
    private readonly float* x, xb, q, att, gate, up, logits, scores; // S rows each (see the constructor)
    private readonly float* finals;             // S rows: final hidden states a batched prefill keeps for its head (Head)
    private readonly float* ropeCos, ropeSin;  // RoPE's cos and sin for every cache position [maxTokens, HS/2]
    private readonly int[] rowSlot, rowToken;   // the slot and token of each row of the running step
    private readonly int[] logitRow;            // the rows whose logits a prefill step keeps (Decode)
    private readonly MatVecJob[] qkvJobs, oJobs, mlpJobs, downJobs;
    private readonly MatVecJob headJob;
    private readonly AttentionJob attention;
    private bool disposed;

    private CpuDecoder(LlamaForCausalLM model, KvCache[] caches, SpinPool pool, DecoderActivations activations)
    {
        Activations = activations;
        this.model = model;
        this.caches = caches;
        cache = caches[0];
        this.pool = pool;
        int slots = caches.Length;
        var cfg = model.Config;
        dim = cfg.HiddenSize;
        numHeads = cfg.NumAttentionHeads;
        numKvHeads = cfg.NumKeyValueHeads;
        headDim = cfg.HeadDim;
        vocab = cfg.VocabSize;
        eps = (float)cfg.RmsNormEps;
        invFreq = cfg.RopeInverseFrequencies();
        int f = cfg.IntermediateSize;

        var table = model.Model.EmbedTokens.Weight;
        if (table.DType.IsQuantized())
        {
            embedBlocks = Address(table);
            embedType = QuantTypes.FromDType(table.DType);
            embedRowBytes = table.Size(1);
        }
        else
        {
            embed = Pointer(table);
        }
        finalNorm = Pointer(model.Model.Norm.Weight);
        layers = new Layer[cfg.NumHiddenLayers];
        for (int i = 0; i < layers.Length; i++)
        {
            var l = model.Model.Layers[i];
            layers[i] = new Layer
            {
                AttnNorm = Pointer(l.InputLayernorm.Weight),
                MlpNorm = Pointer(l.PostAttentionLayernorm.Weight),
                SlotKeys = new float*[slots],
                SlotValues = new float*[slots],
                Q = Project(l.SelfAttn.QProj), K = Project(l.SelfAttn.KProj), V = Project(l.SelfAttn.VProj),
                O = Project(l.SelfAttn.OProj),
                Gate = Project(l.Mlp.GateProj), Up = Project(l.Mlp.UpProj), Down = Project(l.Mlp.DownProj),
            };
            for (int slot = 0; slot < slots; slot++)
            {
                layers[i].SlotKeys[slot] = Pointer(caches[slot].Keys(i));
                layers[i].SlotValues[slot] = Pointer(caches[slot].Values(i));
            }
        }
        head = model.LmHead is { } lmHead ? Project(lmHead)
            : new Projection
            {
                W = embed, Blocks = embedBlocks, Type = embedType, RowBytes = embedRowBytes, Out = vocab, In = dim,
                Repacked = embedBlocks is not null && activations == DecoderActivations.Quantized ? RepackedQ4_0.For(table) : null,
            };

        // Activations, S rows of each (one per slot; row 0 alone in a lone step): x, xb [S, C]; q, att [S, NH*HS];
        // gate, up [S, F]; logits [S, V]; scores [S, NH, maxTokens]; this step's k, v
        // [S, NKV*HS]; and one u [r] per LoRA projection (LoRA only in a lone decoder). The array lives on the
        // pinned object heap, so its address is fixed without a pin handle. Each buffer starts on a 64-byte line:
        // the eight-row pass (BlockDot8) loads 64 bytes of x per row at a time, and on Zen 5 a step of eight rows
        // took 2-3 times as long with x 24 bytes off a line (every load split across two lines) as with x on one.
        int qd = numHeads * headDim, half = headDim / 2;
        var loraProjections = layers.SelectMany(l => new[] { l.Q, l.K, l.V, l.O, l.Gate, l.Up, l.Down }).Append(head).Where(p => p.R > 0).ToList();
        // Rows per step: one per slot, and PrefillRowsChunk where a prompt is prefilled as rows (PrefillRows).
        PrefillUnsupported = PrefillReason();
        PrefillRowsUnsupported = loraProjections.Count > 0 ? "a projection has a LoRA adapter (a step of several rows has no adapter term)" : null;
        int rows = CanPrefill || PrefillRowsUnsupported is not null ? slots : Math.Max(slots, PrefillRowsChunk);
        rowSlot = new int[rows];
        rowToken = new int[rows];
        logitRow = new int[rows];
        long total = rows * (3L * dim + 2L * qd + 2L * f + vocab + (long)numHeads * cache.MaxTokens + 2L * numKvHeads * headDim) + loraProjections.Sum(p => (long)p.R) + 2L * cache.MaxTokens * half;
        const int LineFloats = 16, Buffers = 13;
        total += (long)LineFloats * (Buffers + loraProjections.Count + 1); // room to start each buffer on a line
        buffer = GC.AllocateUninitializedArray<float>(checked((int)total), pinned: true);
        float* next = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buffer));
        float* end = next + total;
        float* Take(long n)
        {
            float* p = (float*)(((nuint)next + LineFloats * sizeof(float) - 1) & ~(nuint)(LineFloats * sizeof(float) - 1));
            next = p + n;
            if (next > end) throw new InvalidOperationException("CpuDecoder: activation buffers overrun"); // a miscount here, not input
            return p;
        }
        x = Take((long)rows * dim); xb = Take((long)rows * dim); finals = Take((long)rows * dim);
        q = Take((long)rows * qd); att = Take((long)rows * qd);
        gate = Take((long)rows * f); up = Take((long)rows * f); logits = Take((long)rows * vocab);
        scores = Take((long)rows * numHeads * cache.MaxTokens);
        // RoPE tables for every position the cache holds, from the definition the modules use (Functional.RopeTables).
        ropeCos = Take((long)cache.MaxTokens * half);
        ropeSin = Take((long)cache.MaxTokens * half);
        var (ropeCosTable, ropeSinTable) = Functional.RopeTables(invFreq, 0, cache.MaxTokens);
        ropeCosTable.ToArray<float>().CopyTo(new Span<float>(ropeCos, cache.MaxTokens * half));
        ropeSinTable.ToArray<float>().CopyTo(new Span<float>(ropeSin, cache.MaxTokens * half));
        foreach (var p in loraProjections) p.U = Take(p.R);
        float* kNew = Take((long)rows * numKvHeads * headDim), vNew = Take((long)rows * numKvHeads * headDim);

        int threads = pool.Threads;
        // One set of activation buffers (one per row) per input width, shared by the jobs (they run one after another).
        var actsByWidth = new Dictionary<int, QuantizedActivations[]>();
        QuantizedActivations[]? Acts(int k) => activations != DecoderActivations.Quantized || k % 32 != 0 ? null
            : actsByWidth.TryGetValue(k, out var a) ? a : actsByWidth[k] = [.. Enumerable.Range(0, rows).Select(_ => new QuantizedActivations(k))];
        qkvJobs = new MatVecJob[layers.Length];
        oJobs = new MatVecJob[layers.Length];
        mlpJobs = new MatVecJob[layers.Length];
        downJobs = new MatVecJob[layers.Length];
        for (int i = 0; i < layers.Length; i++)
        {
            var l = layers[i];
            qkvJobs[i] = new MatVecJob([l.Q, l.K, l.V], [xb, xb, xb], [q, kNew, vNew], false, false, threads, Acts(dim));
            oJobs[i] = new MatVecJob([l.O], [att], [x], true, false, threads, Acts(qd));
            mlpJobs[i] = new MatVecJob([l.Gate, l.Up], [xb, xb], [gate, up], false, true, threads, Acts(dim));
            downJobs[i] = new MatVecJob([l.Down], [gate], [x], true, false, threads, Acts(f));
        }
        headJob = new MatVecJob([head], [xb], [logits], false, false, threads, Acts(dim));
        attention = new AttentionJob(this);
        this.kNew = kNew;
        this.vNew = vNew;
    }

    private readonly float* kNew, vNew; // this token's k and v [NKV*HS] before they go into the cache

    /// <summary>
    /// How decoders multiply block-quantized weights when <see cref="TryCreate"/> is not told
    /// (<see cref="DecoderActivations.Quantized"/>; the CLI's <c>--f32-activations</c> sets Float32).
    /// </summary>
    public static DecoderActivations DefaultActivations { get; set; } = DecoderActivations.Quantized;

    /// <summary>How this decoder multiplies block-quantized weights.</summary>
    public DecoderActivations Activations { get; }

    /// <summary>
    /// A decoder for <paramref name="model"/> writing into <paramref name="cache"/>, or null with the
    /// reason when this path does not apply (weights neither f32 nor block-quantized projections and
    /// embedding on the CPU, a batch above 1, LoRA dropout active in training mode); callers then use
    /// <see cref="LlamaForCausalLM.Forward"/>. <paramref name="activations"/> applies to block-quantized
    /// weights only (default <see cref="DefaultActivations"/>).
    /// </summary>
    public static CpuDecoder? TryCreate(LlamaForCausalLM model, KvCache cache, out string? reason, SpinPool? pool = null, DecoderActivations? activations = null)
    {
        reason = Unsupported(cache) ?? Unsupported(model);
        return reason is null ? new CpuDecoder(model, [cache], pool ?? SpinPool.Shared, activations ?? DefaultActivations) : null;
    }

    private static string? Unsupported(KvCache cache)
    {
        if (cache.Batch != 1) return $"batch {cache.Batch} (the CPU decoder runs batch 1)";
        if (cache.Keys(0).Device != Device.Cpu || cache.Keys(0).DType != DType.F32) return "the KV cache is not f32 on the CPU";
        return null;
    }

    private static string? Unsupported(LlamaForCausalLM model)
    {
        var cfg = model.Config;
        int c = cfg.HiddenSize, qd = cfg.NumAttentionHeads * cfg.HeadDim, kvd = cfg.NumKeyValueHeads * cfg.HeadDim, f = cfg.IntermediateSize;
        // Every projection with the [out, in] its buffers are sized for.
        var linears = new List<(Linear Lin, int Out, int In)>();
        for (int i = 0; i < model.Model.Layers.Count; i++)
        {
            var l = model.Model.Layers[i];
            linears.AddRange([(l.SelfAttn.QProj, qd, c), (l.SelfAttn.KProj, kvd, c), (l.SelfAttn.VProj, kvd, c), (l.SelfAttn.OProj, c, qd), (l.Mlp.GateProj, f, c), (l.Mlp.UpProj, f, c), (l.Mlp.DownProj, c, f)]);
        }
        if (model.LmHead is not null) linears.Add((model.LmHead, cfg.VocabSize, c));
        // Block weights are read as projection rows and embedding rows; anywhere else (a norm) they would not be.
        var blockWeights = new HashSet<Tensor>(ReferenceEqualityComparer.Instance) { model.Model.EmbedTokens.Weight };
        foreach (var (lin, _, _) in linears) blockWeights.Add(lin.Weight);
        foreach (var (name, p) in model.NamedParameters())
            if (p.Device != Device.Cpu || !p.IsContiguous || !(p.DType == DType.F32 || p.DType.IsQuantized() && blockWeights.Contains(p)))
                return $"parameter {name} is {p.DType.Name()} on {p.Device} (the CPU decoder needs contiguous f32, or block-quantized projection and embedding weights, on the CPU)";
        foreach (var (lin, outF, inF) in linears)
        {
            if (lin.OutFeatures != outF || lin.InFeatures != inF || !WholeRows(lin.Weight, outF, inF))
                return $"a projection is [{lin.OutFeatures}, {lin.InFeatures}] where the config gives [{outF}, {inF}]";
            if (lin.Bias is not null) return "a projection has a bias";
            if (lin is LoraLinear { Training: true, Dropout: > 0 }) return "LoRA dropout is active (training mode)";
        }
        if (!WholeRows(model.Model.EmbedTokens.Weight, cfg.VocabSize, c))
            return $"the embedding table is {model.Model.EmbedTokens.Weight.DType.Name()} {Shapes.Format(model.Model.EmbedTokens.Weight.Shape)}, not [{cfg.VocabSize}, {c}] weights";
        return null;
    }

    // True when w holds exactly [rows, k] weights: f32 [rows, k], or rows of whole blocks of its format.
    private static bool WholeRows(Tensor w, int rows, int k)
    {
        if (w.Rank != 2 || w.Size(0) != rows) return false;
        if (!w.DType.IsQuantized()) return w.Size(1) == k;
        var traits = QuantTypes.FromDType(w.DType).Traits();
        return k % traits.BlockSize == 0 && w.Size(1) == k / traits.BlockSize * traits.BlockBytes;
    }

    /// <summary>
    /// Runs token <paramref name="token"/> at position cache.Length, appends its keys and values to the
    /// cache, and returns the next-token logits [V] (valid until the next call).
    /// </summary>
    public ReadOnlySpan<float> Step(int token)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if ((uint)token >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(token), token, $"token id out of range for a vocabulary of {vocab}");
        CheckRoom(cache, 1);
        rowSlot[0] = bound;
        rowToken[0] = token;
        Decode(1);
        return new ReadOnlySpan<float>(logits, vocab);
    }

    // The checks of both prefills: not disposed, the path applies (unsupported: why not), tokens in range and room for them.
    private void CheckPrefill(scoped ReadOnlySpan<int> tokens, string? unsupported, string what)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (unsupported is not null) throw new InvalidOperationException($"{what} does not apply: {unsupported}");
        if (tokens.Length == 0) throw new ArgumentException("prefill needs at least one token", nameof(tokens));
        foreach (int t in tokens)
            if ((uint)t >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(tokens), t, $"token id out of range for a vocabulary of {vocab}");
        CheckRoom(cache, tokens.Length);
    }

    // Refuses `count` more tokens after what `c` holds when they do not fit the cache or the model's positions.
    private void CheckRoom(KvCache c, int count)
    {
        int end = c.Length + count;
        if (end > c.MaxTokens) throw new InvalidOperationException($"KV cache full: {end} tokens > capacity {c.MaxTokens}");
        if (end > model.Config.MaxPositionEmbeddings) throw new ArgumentException($"sequence of {end} tokens exceeds max_position_embeddings {model.Config.MaxPositionEmbeddings}");
    }

    // One decoding step of n rows: row i runs token rowToken[i] at the next position of slot rowSlot[i] (rows of
    // the same slot at its next positions in row order), appends its keys and values to that slot's cache and
    // leaves its logits in row i of the logits buffer. Every row's numbers are computed by the same code whatever
    // n is. logitRows: when given, only the logits of rows logitRows[0..logitCount) (ascending), in rows
    // 0..logitCount of the logits buffer (a prefill reads no others; none at all for a chunk that ends no prompt).
    // keep: when given (with logitRows), no head at all: those rows' final hidden states go to keep[0..logitCount)
    // instead, for one head run over the rows of several steps (Head).
    private void Decode(int n, int[]? logitRows = null, int logitCount = 0, float* keep = null)
    {
        int half = headDim / 2, qd = numHeads * headDim, kvDim = numKvHeads * headDim, maxT = cache.MaxTokens;
        long attentionWork = 0;
        for (int i = 0; i < n; i++)
        {
            // Rows of one slot (a prompt prefilled as rows) take its next positions in order.
            int token = rowToken[i], pos = caches[rowSlot[i]].Length;
            for (int j = 0; j < i; j++)
                if (rowSlot[j] == rowSlot[i]) pos++;
            float* xi = x + (long)i * dim;
            if (embedBlocks is not null) QuantizedDot.Expand(embedType, embedBlocks + token * embedRowBytes, xi, dim);
            else new ReadOnlySpan<float>(embed + (long)token * dim, dim).CopyTo(new Span<float>(xi, dim));
            attention.Positions[i] = pos + 1;
            attentionWork += (long)(pos + 1) * kvDim;
        }
        for (int li = 0; li < layers.Length; li++)
        {
            var l = layers[li];
            for (int i = 0; i < n; i++) RmsNorm(xb + (long)i * dim, x + (long)i * dim, l.AttnNorm, dim, eps);
            Run(qkvJobs[li], n);
            for (int i = 0; i < n; i++)
            {
                int pos = attention.Positions[i] - 1;
                float* qi = q + (long)i * qd, ki = kNew + (long)i * kvDim, vi = vNew + (long)i * kvDim, ci = ropeCos + (long)pos * half, si = ropeSin + (long)pos * half;
                float* keys = l.SlotKeys[rowSlot[i]], values = l.SlotValues[rowSlot[i]];
                for (int h = 0; h < numHeads; h++) Rope(qi + h * headDim, ci, si, headDim);
                for (int g = 0; g < numKvHeads; g++)
                {
                    Rope(ki + g * headDim, ci, si, headDim);
                    new ReadOnlySpan<float>(ki + g * headDim, headDim).CopyTo(new Span<float>(keys + ((long)g * maxT + pos) * headDim, headDim));
                    new ReadOnlySpan<float>(vi + g * headDim, headDim).CopyTo(new Span<float>(values + ((long)g * maxT + pos) * headDim, headDim));
                }
                attention.KeysCache[i] = keys;
                attention.ValuesCache[i] = values;
            }
            if (attentionWork >= 16 * 1024) pool.Run(attention, n * numHeads);
            else for (int t = 0; t < n * numHeads; t++) attention.Execute(t);
            Run(oJobs[li], n);
            for (int i = 0; i < n; i++) RmsNorm(xb + (long)i * dim, x + (long)i * dim, l.MlpNorm, dim, eps);
            Run(mlpJobs[li], n);
            Run(downJobs[li], n);
        }
        if (keep is not null)
        {
            for (int j = 0; j < logitCount; j++)
                new ReadOnlySpan<float>(x + (long)logitRows![j] * dim, dim).CopyTo(new Span<float>(keep + (long)j * dim, dim));
        }
        else if (logitRows is null) Head(x, null, n);
        else if (logitCount > 0) Head(x, logitRows, logitCount);
        for (int i = 0; i < n; i++) caches[rowSlot[i]].Length++;
    }

    // The final norm and the head over count final hidden states, into rows 0..count of the logits buffer: row j is
    // hidden + rows[j] C (rows null: hidden + j C); count <= the rows a step holds. Decode ends with it, and a batched
    // prefill runs it once over the states its steps kept, so each row's logits are the same either way bit for bit.
    // The head is the largest matrix and the last one a step reads, so its most recently read rows are the ones
    // still in the last-level cache when the next run reaches it (stories15M: 37 MB of head and 24 MB of layers
    // against a 32 MB L3). Reading it in the opposite order each run starts from those rows instead of from rows
    // long evicted. Every row is computed the same way in either order.
    private void Head(float* hidden, int[]? rows, int count)
    {
        headJob.Backward = !headJob.Backward;
        for (int j = 0; j < count; j++) RmsNorm(xb + (long)j * dim, hidden + (long)(rows is null ? j : rows[j]) * dim, finalNorm, dim, eps);
        Run(headJob, count);
    }

    /// <summary>Releases the pinned weights.</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        foreach (var p in pins) p.Dispose();
    }

    // ---------------- the pieces ----------------

    // Runs a product job over n input rows (LoRA adapters only in a lone decoder, n = 1).
    private void Run(MatVecJob job, int n = 1)
    {
        job.Count = n;
        // The LoRA down-projections u = A x are tiny (r rows): done here, before the rows that need them.
        for (int s = 0; s < job.Slots.Length; s++)
        {
            var p = job.Slots[s];
            if (p.R > 0) Rows(p.LoraA, p.In, job.Input(s), 1, p.U, p.R, 0, p.R, accumulate: false);
        }
        job.QuantizeInput();
        pool.Run(job, job.Tasks);
    }

    // The address of t's first element, pinned until Dispose (f32 tensors through Pointer, block tensors as bytes).
    private byte* Address(Tensor t)
    {
        var storage = (CpuStorage)t.Storage;
        var pin = storage.Pin();
        pins.Add(pin);
        return (byte*)pin.Pointer + (long)t.Offset * t.DType.SizeOf();
    }

    private float* Pointer(Tensor t) => (float*)Address(t);

    private Projection Project(Linear lin)
    {
        var p = new Projection { Out = lin.OutFeatures, In = lin.InFeatures };
        if (lin.Weight.DType.IsQuantized())
        {
            p.Blocks = Address(lin.Weight);
            p.Type = QuantTypes.FromDType(lin.Weight.DType);
            p.RowBytes = lin.Weight.Size(1);
            if (Activations == DecoderActivations.Quantized) p.Repacked = RepackedQ4_0.For(lin.Weight);
        }
        else
        {
            p.W = Pointer(lin.Weight);
        }
        if (lin is LoraLinear lora)
        {
            p.LoraA = Pointer(lora.LoraA.Weight);
            p.LoraB = Pointer(lora.LoraB.Weight);
            p.R = lora.Rank;
            p.Scale = (float)lora.Scaling;
        }
        return p;
    }

    // y_i[r0..r1) (=|+=) W[r0..r1) x_i for the n rows x_i = x + i * In, y_i = y + i * Out, plus the LoRA term when p
    // has one (n = 1); acts: each x_i quantized, for integer rows. Block weights run row by row of x, each over the
    // chunk's weight rows, so the chunk is read from memory once and from cache for the other rows.
    private static void Rows(Projection p, float* xIn, float* y, int r0, int r1, bool accumulate, QuantizedActivations[]? acts, int n)
    {
        if (p.Blocks is null) Rows(p.W, p.In, xIn, n, y, p.Out, r0, r1, accumulate);
        else
            for (int i = 0; i < n; i++)
            {
                float* xi = xIn + (long)i * p.In, yi = y + (long)i * p.Out;
                var a = acts?[i];
                if (a is not null && p.Repacked is not null) p.Repacked.MatVec(a, yi, r0 / RepackedQ4_0.GroupRows, r1 / RepackedQ4_0.GroupRows, accumulate);
                else if (a is not null && IntegerRows.Supports(p.Type)) IntegerBlockRows(p, a, yi, r0, r1, accumulate);
                else BlockRows(p, xi, yi, r0, r1, accumulate);
            }
        for (int r = r0; r < r1 && p.R > 0; r++) y[r] += p.Scale * Dot(p.LoraB + (long)r * p.R, p.U, p.R);
    }

    // y[i, r] (=|+=) dot(W[r, :k], x[i, :k]) for r in [r0, r1) and the n rows of x [n, k] (y's rows ldy apart).
    //
    // Each weight row is read from memory once and then used for every row of x from cache. With AVX-512 and two
    // or more rows of x, weight rows go four at a time and the rows of x two per pass over them (BlockDot4x2:
    // sixteen 512-bit accumulators, each holding two of BlockDot's 256-bit ones lane for lane; 12 loads per 16 FMAs,
    // and one transposing reduction per four sums), the four rows from L1 after the first pass; while the first
    // block of x rows runs over a group, the next group is prefetched into L1 (without it, a matrix streamed from
    // memory, the head, ran at 0.6x: the later passes over a group issue no loads to memory). A tile's last one to
    // three weight rows go one at a time: eight rows of x in one pass (BlockDot8), the rest, and everything with
    // AVX2 only, three rows per pass (BlockDot3: twelve accumulators, as many as AVX2's sixteen registers hold with
    // the loads) and the last two or four as passes of two (BlockDot2), so only a lone row runs a one-row pass.
    // A pass is bound by its FMAs and loads more than by memory: on Zen 5, eight rows over the 32000 x 288 head
    // took 2.2 ms in passes of 3 + 3 + 2 and 1.25 ms in one pass of eight (one row: 0.85 ms); four weight rows by
    // two of x took 0.77x BlockDot8's time for 32 rows over a 864 x 288 matrix (benchmarks/RESULTS.md). When x is
    // larger than L1 (n k floats over XBlockBytes), the rows of x go in blocks that fit it and the weight rows in
    // tiles that fit L2 (TileBytes), so a tile comes from memory for the first block and from L2 for the others.
    // Every (weight row, x row) pair is summed in exactly one order, whichever pass, block or tile computes it and
    // whatever n is (four accumulators over 32-float strides, the 8-float tail into the first, then the scalar
    // tail), so a row's result does not depend on the other rows: a lone decoding step (n = 1) and a batched one
    // agree bit for bit. One weight row at a time keeps the weights a single sequential stream (the hardware
    // prefetcher's best case; measured ~20% faster for n = 1 than four interleaved rows sharing each load of x).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Rows(float* w, int k, float* xIn, int n, float* y, long ldy, int r0, int r1, bool accumulate)
    {
        const long TileBytes = 96 * 1024;
        if (r0 >= r1 || n <= 0) return;
        bool quads = Vector512.IsHardwareAccelerated && n >= 2, eights = quads && n >= 8;
        // Blocks of x rows: a multiple of the widest pass's rows (at least one pass), within XBlockBytes.
        long xBlockBytes = eights ? 32 * 1024 : 16 * 1024;
        int pass = eights ? 8 : 3;
        int block = (long)n * k * sizeof(float) <= xBlockBytes ? n : (int)Math.Max(pass, xBlockBytes / (k * (long)sizeof(float)) / pass * pass);
        int tile = block == n ? r1 - r0 : (int)Math.Clamp(TileBytes / (k * (long)sizeof(float)), 1, r1 - r0);
        for (int t0 = r0; t0 < r1; t0 += tile)
        {
            int t1 = Math.Min(r1, t0 + tile);
            for (int i0 = 0; i0 < n; i0 += block)
            {
                int i1 = Math.Min(n, i0 + block);
                int r = t0;
                if (quads)
                    for (; t1 - r >= 4; r += 4)
                    {
                        float* wr = w + (long)r * k;
                        if (i0 == 0 && t1 - r >= 8)
                            for (long b = 0; b < 16L * k; b += 64) Sse.Prefetch0((byte*)(wr + 4L * k) + b);
                        int i = i0;
                        for (; i1 - i >= 2; i += 2) BlockDot4x2(wr, k, xIn + (long)i * k, y + i * ldy + r, ldy, accumulate);
                        if (i < i1) BlockDot4x1(wr, k, xIn + (long)i * k, y + i * ldy + r, accumulate);
                    }
                for (; r < t1; r++)
                {
                    float* wr = w + (long)r * k;
                    int i = i0;
                    if (eights)
                        for (; i1 - i >= 8; i += 8) BlockDot8(wr, k, xIn + (long)i * k, y + i * ldy + r, ldy, accumulate);
                    if (Vector256.IsHardwareAccelerated)
                    {
                        // Passes of three rows of x, then two (four left go as 2 + 2, not 3 + 1): a one-row pass
                        // reloads the weight row for a single FMA per load pair.
                        for (; i1 - i >= 3 && i1 - i != 4; i += 3) BlockDot3(wr, k, xIn + (long)i * k, y + i * ldy + r, ldy, accumulate);
                        for (; i1 - i >= 2; i += 2) BlockDot2(wr, k, xIn + (long)i * k, y + i * ldy + r, ldy, accumulate);
                    }
                    for (; i < i1; i++)
                    {
                        float t = BlockDot(wr, xIn + (long)i * k, k);
                        float* yr = y + i * ldy + r;
                        *yr = accumulate ? *yr + t : t;
                    }
                }
            }
        }
    }

    // BlockDot of four weight rows (w, w + k, w + 2k, w + 3k) with two rows of x (x0, x0 + k) in one pass, with
    // AVX-512: y[i ldy + j] for x row i and weight row j. Each pair keeps BlockDot8's two accumulators (BlockDot's
    // s0 | s1 and s2 | s3), so each lane sums the same products in the same order; each x row's four sums end
    // together in Finish4. Per 32 floats: 12 loads for 16 FMAs (BlockDot8: 18 for 16), and one transposing
    // reduction per four sums instead of a horizontal sum each.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockDot4x2(float* w, int k, float* x0, float* y, long ldy, bool accumulate)
    {
        Vector512<float> a0 = Vector512<float>.Zero, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        Vector512<float> b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0, b6 = a0, b7 = a0;
        float* x1 = x0 + k, w1 = w + k, w2 = w1 + k, w3 = w2 + k;
        int p = 0;
        for (; p + 32 <= k; p += 32)
        {
            var xl = Vector512.Load(x0 + p);
            var xh = Vector512.Load(x0 + p + 16);
            var zl = Vector512.Load(x1 + p);
            var zh = Vector512.Load(x1 + p + 16);
            var wl = Vector512.Load(w + p);
            var wh = Vector512.Load(w + p + 16);
            a0 = Vector512.FusedMultiplyAdd(xl, wl, a0);
            a1 = Vector512.FusedMultiplyAdd(xh, wh, a1);
            b0 = Vector512.FusedMultiplyAdd(zl, wl, b0);
            b1 = Vector512.FusedMultiplyAdd(zh, wh, b1);
            wl = Vector512.Load(w1 + p);
            wh = Vector512.Load(w1 + p + 16);
            a2 = Vector512.FusedMultiplyAdd(xl, wl, a2);
            a3 = Vector512.FusedMultiplyAdd(xh, wh, a3);
            b2 = Vector512.FusedMultiplyAdd(zl, wl, b2);
            b3 = Vector512.FusedMultiplyAdd(zh, wh, b3);
            wl = Vector512.Load(w2 + p);
            wh = Vector512.Load(w2 + p + 16);
            a4 = Vector512.FusedMultiplyAdd(xl, wl, a4);
            a5 = Vector512.FusedMultiplyAdd(xh, wh, a5);
            b4 = Vector512.FusedMultiplyAdd(zl, wl, b4);
            b5 = Vector512.FusedMultiplyAdd(zh, wh, b5);
            wl = Vector512.Load(w3 + p);
            wh = Vector512.Load(w3 + p + 16);
            a6 = Vector512.FusedMultiplyAdd(xl, wl, a6);
            a7 = Vector512.FusedMultiplyAdd(xh, wh, a7);
            b6 = Vector512.FusedMultiplyAdd(zl, wl, b6);
            b7 = Vector512.FusedMultiplyAdd(zh, wh, b7);
        }
        Finish4(w, k, p, x0, y, accumulate, a0, a1, a2, a3, a4, a5, a6, a7);
        Finish4(w, k, p, x1, y + ldy, accumulate, b0, b1, b2, b3, b4, b5, b6, b7);
    }

    // BlockDot4x2 for one row of x.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockDot4x1(float* w, int k, float* x0, float* y, bool accumulate)
    {
        Vector512<float> a0 = Vector512<float>.Zero, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        float* w1 = w + k, w2 = w1 + k, w3 = w2 + k;
        int p = 0;
        for (; p + 32 <= k; p += 32)
        {
            var xl = Vector512.Load(x0 + p);
            var xh = Vector512.Load(x0 + p + 16);
            a0 = Vector512.FusedMultiplyAdd(xl, Vector512.Load(w + p), a0);
            a1 = Vector512.FusedMultiplyAdd(xh, Vector512.Load(w + p + 16), a1);
            a2 = Vector512.FusedMultiplyAdd(xl, Vector512.Load(w1 + p), a2);
            a3 = Vector512.FusedMultiplyAdd(xh, Vector512.Load(w1 + p + 16), a3);
            a4 = Vector512.FusedMultiplyAdd(xl, Vector512.Load(w2 + p), a4);
            a5 = Vector512.FusedMultiplyAdd(xh, Vector512.Load(w2 + p + 16), a5);
            a6 = Vector512.FusedMultiplyAdd(xl, Vector512.Load(w3 + p), a6);
            a7 = Vector512.FusedMultiplyAdd(xh, Vector512.Load(w3 + p + 16), a7);
        }
        Finish4(w, k, p, x0, y, accumulate, a0, a1, a2, a3, a4, a5, a6, a7);
    }

    // The ends of four BlockDot sums of one x row with weight rows w + j k from p on (pair j's accumulators lo_j,
    // hi_j), into y[0..4): per pair DotTail's 8-float tail into s0 and (s0 + s1) + (s2 + s3); then the four
    // Vector256.Sum at once, as two rounds of HorizontalAdd and one add of the halves, which adds the same lanes in
    // the same order, ((e0 + e1) + (e2 + e3)) + ((e4 + e5) + (e6 + e7)); then the scalar tails.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish4(float* w, int k, int p, float* x, float* y, bool accumulate,
        Vector512<float> lo0, Vector512<float> hi0, Vector512<float> lo1, Vector512<float> hi1,
        Vector512<float> lo2, Vector512<float> hi2, Vector512<float> lo3, Vector512<float> hi3)
    {
        var s0 = lo0.GetLower(); var t0 = lo1.GetLower(); var u0 = lo2.GetLower(); var v0 = lo3.GetLower();
        int q = p;
        for (; q + 8 <= k; q += 8)
        {
            var xq = Vector256.Load(x + q);
            s0 = Vector256.FusedMultiplyAdd(xq, Vector256.Load(w + q), s0);
            t0 = Vector256.FusedMultiplyAdd(xq, Vector256.Load(w + k + q), t0);
            u0 = Vector256.FusedMultiplyAdd(xq, Vector256.Load(w + 2 * k + q), u0);
            v0 = Vector256.FusedMultiplyAdd(xq, Vector256.Load(w + 3 * k + q), v0);
        }
        var e0 = (s0 + lo0.GetUpper()) + (hi0.GetLower() + hi0.GetUpper());
        var e1 = (t0 + lo1.GetUpper()) + (hi1.GetLower() + hi1.GetUpper());
        var e2 = (u0 + lo2.GetUpper()) + (hi2.GetLower() + hi2.GetUpper());
        var e3 = (v0 + lo3.GetUpper()) + (hi3.GetLower() + hi3.GetUpper());
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(e0, e1), Avx.HorizontalAdd(e2, e3));
        var sums = h.GetLower() + h.GetUpper();
        if (q < k)
        {
            float f0 = sums.GetElement(0), f1 = sums.GetElement(1), f2 = sums.GetElement(2), f3 = sums.GetElement(3);
            for (; q < k; q++)
            {
                f0 += x[q] * w[q];
                f1 += x[q] * w[k + q];
                f2 += x[q] * w[2 * k + q];
                f3 += x[q] * w[3 * k + q];
            }
            sums = Vector128.Create(f0, f1, f2, f3);
        }
        if (accumulate) sums = Vector128.Load(y) + sums;
        sums.Store(y);
    }

    // dot(w, x) over k values in the order Rows documents (TensorPrimitives.Dot without 256-bit vectors).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float BlockDot(float* w, float* xIn, int k)
    {
        if (!Vector256.IsHardwareAccelerated) return Dot(w, xIn, k);
        Vector256<float> s0 = Vector256<float>.Zero, s1 = s0, s2 = s0, s3 = s0;
        int p = 0;
        for (; p + 32 <= k; p += 32)
        {
            s0 = Vector256.FusedMultiplyAdd(Vector256.Load(xIn + p), Vector256.Load(w + p), s0);
            s1 = Vector256.FusedMultiplyAdd(Vector256.Load(xIn + p + 8), Vector256.Load(w + p + 8), s1);
            s2 = Vector256.FusedMultiplyAdd(Vector256.Load(xIn + p + 16), Vector256.Load(w + p + 16), s2);
            s3 = Vector256.FusedMultiplyAdd(Vector256.Load(xIn + p + 24), Vector256.Load(w + p + 24), s3);
        }
        return DotTail(w, xIn, p, k, s0, s1, s2, s3);
    }

    // The end of BlockDot's order from p on (p a multiple of 32 past the 32-float strides): the 8-float tail into s0,
    // the sum (s0 + s1) + (s2 + s3) across lanes, then the scalar tail. BlockDot8 ends each of its pairs here too.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float DotTail(float* w, float* x, int p, int k, Vector256<float> s0, Vector256<float> s1, Vector256<float> s2, Vector256<float> s3)
    {
        for (; p + 8 <= k; p += 8) s0 = Vector256.FusedMultiplyAdd(Vector256.Load(x + p), Vector256.Load(w + p), s0);
        float t = Vector256.Sum((s0 + s1) + (s2 + s3));
        for (; p < k; p++) t += x[p] * w[p];
        return t;
    }

    // BlockDot of one weight row with eight rows of x (x0, x0 + k, ..., x0 + 7k) in one pass, with AVX-512. Pair j's
    // accumulators a(2j) and a(2j+1) hold BlockDot's s0 | s1 and s2 | s3 (low | high 256-bit halves), so each lane
    // sums the same products in the same order; the 8-float tail and the sum then run on the halves as BlockDot's do.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockDot8(float* w, int k, float* x0, float* y, long ldy, bool accumulate)
    {
        Vector512<float> a0 = Vector512<float>.Zero, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
        long k1 = k, k2 = 2L * k, k3 = 3L * k, k4 = 4L * k, k5 = 5L * k, k6 = 6L * k, k7 = 7L * k;
        int p = 0;
        for (; p + 32 <= k; p += 32)
        {
            var w0 = Vector512.Load(w + p);
            var w1 = Vector512.Load(w + p + 16);
            float* xp = x0 + p;
            a0 = Vector512.FusedMultiplyAdd(Vector512.Load(xp), w0, a0);
            a1 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + 16), w1, a1);
            a2 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k1), w0, a2);
            a3 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k1 + 16), w1, a3);
            a4 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k2), w0, a4);
            a5 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k2 + 16), w1, a5);
            a6 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k3), w0, a6);
            a7 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k3 + 16), w1, a7);
            a8 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k4), w0, a8);
            a9 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k4 + 16), w1, a9);
            a10 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k5), w0, a10);
            a11 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k5 + 16), w1, a11);
            a12 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k6), w0, a12);
            a13 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k6 + 16), w1, a13);
            a14 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k7), w0, a14);
            a15 = Vector512.FusedMultiplyAdd(Vector512.Load(xp + k7 + 16), w1, a15);
        }
        Finish8(w, k, p, x0, y, accumulate, a0, a1);
        Finish8(w, k, p, x0 + k1, y + ldy, accumulate, a2, a3);
        Finish8(w, k, p, x0 + k2, y + 2 * ldy, accumulate, a4, a5);
        Finish8(w, k, p, x0 + k3, y + 3 * ldy, accumulate, a6, a7);
        Finish8(w, k, p, x0 + k4, y + 4 * ldy, accumulate, a8, a9);
        Finish8(w, k, p, x0 + k5, y + 5 * ldy, accumulate, a10, a11);
        Finish8(w, k, p, x0 + k6, y + 6 * ldy, accumulate, a12, a13);
        Finish8(w, k, p, x0 + k7, y + 7 * ldy, accumulate, a14, a15);
    }

    // One pair of BlockDot8 from p on: BlockDot's tail and sum (DotTail) over the four 256-bit halves.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish8(float* w, int k, int p, float* x, float* y, bool accumulate, Vector512<float> lo, Vector512<float> hi)
    {
        float t = DotTail(w, x, p, k, lo.GetLower(), lo.GetUpper(), hi.GetLower(), hi.GetUpper());
        *y = accumulate ? *y + t : t;
    }

    // BlockDot of one weight row with three rows of x (x0, x0 + k, x0 + 2k) in one pass: each pair keeps its own
    // four accumulators and the order of BlockDot, and the weights are loaded once for the three.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockDot3(float* w, int k, float* x0, float* y, long ldy, bool accumulate)
    {
        float* x1 = x0 + k, x2 = x1 + k;
        Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0;
        Vector256<float> b0 = a0, b1 = a0, b2 = a0, b3 = a0, c0 = a0, c1 = a0, c2 = a0, c3 = a0;
        int p = 0;
        for (; p + 32 <= k; p += 32)
        {
            var w0 = Vector256.Load(w + p);
            a0 = Vector256.FusedMultiplyAdd(Vector256.Load(x0 + p), w0, a0);
            b0 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p), w0, b0);
            c0 = Vector256.FusedMultiplyAdd(Vector256.Load(x2 + p), w0, c0);
            var w1 = Vector256.Load(w + p + 8);
            a1 = Vector256.FusedMultiplyAdd(Vector256.Load(x0 + p + 8), w1, a1);
            b1 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p + 8), w1, b1);
            c1 = Vector256.FusedMultiplyAdd(Vector256.Load(x2 + p + 8), w1, c1);
            var w2 = Vector256.Load(w + p + 16);
            a2 = Vector256.FusedMultiplyAdd(Vector256.Load(x0 + p + 16), w2, a2);
            b2 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p + 16), w2, b2);
            c2 = Vector256.FusedMultiplyAdd(Vector256.Load(x2 + p + 16), w2, c2);
            var w3 = Vector256.Load(w + p + 24);
            a3 = Vector256.FusedMultiplyAdd(Vector256.Load(x0 + p + 24), w3, a3);
            b3 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p + 24), w3, b3);
            c3 = Vector256.FusedMultiplyAdd(Vector256.Load(x2 + p + 24), w3, c3);
        }
        for (; p + 8 <= k; p += 8)
        {
            var w0 = Vector256.Load(w + p);
            a0 = Vector256.FusedMultiplyAdd(Vector256.Load(x0 + p), w0, a0);
            b0 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p), w0, b0);
            c0 = Vector256.FusedMultiplyAdd(Vector256.Load(x2 + p), w0, c0);
        }
        float ta = Vector256.Sum((a0 + a1) + (a2 + a3)), tb = Vector256.Sum((b0 + b1) + (b2 + b3)), tc = Vector256.Sum((c0 + c1) + (c2 + c3));
        for (; p < k; p++)
        {
            ta += x0[p] * w[p];
            tb += x1[p] * w[p];
            tc += x2[p] * w[p];
        }
        if (accumulate) { ta += y[0]; tb += y[ldy]; tc += y[2 * ldy]; }
        y[0] = ta; y[ldy] = tb; y[2 * ldy] = tc;
    }

    // BlockDot3 for two rows of x (x0, x0 + k): eight accumulators, the same order per pair.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockDot2(float* w, int k, float* x0, float* y, long ldy, bool accumulate)
    {
        float* x1 = x0 + k;
        Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int p = 0;
        for (; p + 32 <= k; p += 32)
        {
            var w0 = Vector256.Load(w + p);
            a0 = Vector256.FusedMultiplyAdd(Vector256.Load(x0 + p), w0, a0);
            b0 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p), w0, b0);
            var w1 = Vector256.Load(w + p + 8);
            a1 = Vector256.FusedMultiplyAdd(Vector256.Load(x0 + p + 8), w1, a1);
            b1 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p + 8), w1, b1);
            var w2 = Vector256.Load(w + p + 16);
            a2 = Vector256.FusedMultiplyAdd(Vector256.Load(x0 + p + 16), w2, a2);
            b2 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p + 16), w2, b2);
            var w3 = Vector256.Load(w + p + 24);
            a3 = Vector256.FusedMultiplyAdd(Vector256.Load(x0 + p + 24), w3, a3);
            b3 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p + 24), w3, b3);
        }
        for (; p + 8 <= k; p += 8)
        {
            var w0 = Vector256.Load(w + p);
            a0 = Vector256.FusedMultiplyAdd(Vector256.Load(x0 + p), w0, a0);
            b0 = Vector256.FusedMultiplyAdd(Vector256.Load(x1 + p), w0, b0);
        }
        float ta = Vector256.Sum((a0 + a1) + (a2 + a3)), tb = Vector256.Sum((b0 + b1) + (b2 + b3));
        for (; p < k; p++)
        {
            ta += x0[p] * w[p];
            tb += x1[p] * w[p];
        }
        if (accumulate) { ta += y[0]; tb += y[ldy]; }
        y[0] = ta; y[ldy] = tb;
    }

    // y[r] (=|+=) dot(dequantize(row r of p's blocks), x) for r in [r0, r1): the weights stay in their blocks.
    private static void BlockRows(Projection p, float* xIn, float* y, int r0, int r1, bool accumulate)
    {
        for (int r = r0; r < r1; r++)
        {
            float t = QuantizedDot.Row(p.Type, p.Blocks + r * p.RowBytes, xIn, p.In);
            y[r] = accumulate ? y[r] + t : t;
        }
    }

    // The same with integer dot products against the quantized input (IntegerRows).
    private static void IntegerBlockRows(Projection p, QuantizedActivations acts, float* y, int r0, int r1, bool accumulate)
    {
        for (int r = r0; r < r1; r++)
        {
            float t = IntegerRows.Dot(p.Type, p.Blocks + r * p.RowBytes, acts);
            y[r] = accumulate ? y[r] + t : t;
        }
    }

    private static float Dot(float* a, float* b, int n) =>
        System.Numerics.Tensors.TensorPrimitives.Dot(new ReadOnlySpan<float>(a, n), new ReadOnlySpan<float>(b, n));

    private static void Axpy(float* y, float alpha, float* x, int n) =>
        System.Numerics.Tensors.TensorPrimitives.FusedMultiplyAdd(new ReadOnlySpan<float>(x, n), alpha, new ReadOnlySpan<float>(y, n), new Span<float>(y, n));

    // y = x / sqrt(mean(x^2) + eps) * w, as the CPU backend's RmsNorm computes it.
    private static void RmsNorm(float* y, float* xIn, float* w, int n, float eps)
    {
        var xs = new ReadOnlySpan<float>(xIn, n);
        var ys = new Span<float>(y, n);
        float s = 1f / MathF.Sqrt(System.Numerics.Tensors.TensorPrimitives.SumOfSquares(xs) * (1f / n) + eps);
        System.Numerics.Tensors.TensorPrimitives.Multiply(xs, s, ys);
        System.Numerics.Tensors.TensorPrimitives.Multiply(ys, new ReadOnlySpan<float>(w, n), ys);
    }

    // Rotate-half RoPE of one head in place: (a, b) = (v[i], v[i + HS/2]) -> (a cos - b sin, b cos + a sin).
    private static void Rope(float* v, float* cos, float* sin, int hs)
    {
        int half = hs / 2, i = 0;
        // Eight pairs at a time where they fit: each product and the difference or sum are rounded separately,
        // as in the scalar loop (no fused multiply-add), so the result is the same bit for bit.
        if (Vector256.IsHardwareAccelerated)
            for (; i + 8 <= half; i += 8)
            {
                var a = Vector256.Load(v + i);
                var b = Vector256.Load(v + i + half);
                var c = Vector256.Load(cos + i);
                var s = Vector256.Load(sin + i);
                Vector256.Store(a * c - b * s, v + i);
                Vector256.Store(b * c + a * s, v + i + half);
            }
        for (; i < half; i++)
        {
            float a = v[i], b = v[i + half];
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i] + a * sin[i];
        }
    }
}
