// Prompt processing over Q4_0 weights in int8 arithmetic: y [M, N] = x [M, K] @ dequantize(w)^T with the rows
// of x quantized once to Q8_0 (llama.cpp's quantize_row_q8_0, bit for bit) and no f32 copy of the weights.
// The prefill counterpart of IntegerRows' mat-vec; CpuBackend.MatMulQuantized takes it for M > 4 inside an
// IntegerProducts scope (what generation enters when its decoder uses quantized activations).
//
// Micro-kernel: 4 weight rows x 4 tokens, one 32-weight block at a time (AVX2):
//   Four 256-bit registers W_s (s = 0..3, the block's k in [8s, 8s + 8)) each hold 8 unsigned nibbles of each
//   of the 4 rows: [r0 | r1 | r2 | r3] x 8 bytes. A Q4_0 block keeps weight j in the low nibble of byte j and
//   weight j + 16 in the high nibble, so with A = bytes 0..7 and B = bytes 8..15 of the four rows
//   (vpunpcklqdq / vpunpckhqdq of the rows' 16-byte loads): W_0 = A & 15, W_1 = B & 15, W_2 = A >> 4,
//   W_3 = B >> 4. The rows are gathered from their own blocks as they are read, so the weights need no
//   repacked copy (llama.cpp repacks Q4_0 into interleaved rows once at load; with memory-mapped weights that
//   copy would double the resident weights, and the gather costs 8 shuffles per block shared by 4 tokens).
//   Per token: X_s = its 8 activation bytes of slice s broadcast to the 4 rows; pmaddubsw(W_s, X_s) gives the
//   pair sums (|.| <= 2 * 15 * 127 = 3810), the 4 slices are added as int16 (<= 15240, no overflow), and one
//   pmaddwd with ones gives 8 int32 lanes: (row r, k mod 8 in 0..3) and (row r, 4..7). The -8 of Q4_0's
//   nibbles is added back from the activations alone, once per token and block: lane pattern
//   [B0 B1 B0 B1 ...] with B0 = -8 sum of q over k mod 8 in 0..3 and B1 over 4..7.
//   Then acc_token += float(lanes) * [d_r0 d_r0 d_r1 d_r1 ...] * d_x; each output is the sum of its two lanes.
// Per token and block that is 4 broadcasts, 4 pmaddubsw, 3 paddw, 1 pmaddwd, 1 paddd, 1 convert, 1 multiply
// and 1 FMA for 128 multiply-adds, against 16 FMAs (plus the weights' expansion) for the same work in f32.
// Loops: threads take ranges of 4-row groups; each walks the tokens in chunks of 64 (their activations stay
// in L2) and, per chunk, its groups and the chunk's 4-token tiles. Row and token remainders reuse the last
// row / token and drop the extra results.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TinyLlama.Quantization;

namespace TinyLlama.Backends.Cpu;

/// <summary>
/// Where <see cref="CpuBackend.MatMulQuantized"/> may quantize activations to Q8_0 for its prefill GEMM
/// (llama.cpp's way, the same rounding as the integer decoder); outside a scope it stays exact in f32.
/// </summary>
public static class IntegerProducts
{
    [ThreadStatic] private static int depth;

    /// <summary>Whether the calling thread is inside a scope.</summary>
    public static bool Enabled => depth > 0;

    /// <summary>Enters a scope on the calling thread when <paramref name="enable"/>; dispose to leave it.</summary>
    public static Scope Enable(bool enable = true)
    {
        if (enable) depth++;
        return new Scope(enable);
    }

    /// <summary>A scope of <see cref="Enable"/> (the default value is no scope).</summary>
    public readonly struct Scope(bool entered) : IDisposable
    {
        /// <summary>Leaves the scope.</summary>
        public void Dispose()
        {
            if (entered) depth--;
        }
    }
}

/// <summary>The int8 GEMM over Q4_0 weights (see the file header).</summary>
internal static unsafe class IntegerGemm
{
    private const int Q4Bytes = 18, TokenChunk = 64;

    /// <summary>Whether this CPU runs the kernel (AVX2 and FMA).</summary>
    public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;

    /// <summary>
    /// y[i, j] (row stride ldy) = dot(dequantize(row j of w), x row i) for x [M, K] f32, w [N] rows of K / 32
    /// Q4_0 blocks; K a multiple of 32, M and N positive.
    /// </summary>
    public static void Q4_0(float* x, byte* w, float* y, int m, int n, int k, int ldy)
    {
        int blocks = k / 32;
        // Activations: q [M, K] int8, d [M, blocks] f32, bias [M, blocks] lane patterns.
        var q = GC.AllocateUninitializedArray<sbyte>(m * k, pinned: true);
        var d = GC.AllocateUninitializedArray<float>(m * blocks, pinned: true);
        var bias = GC.AllocateUninitializedArray<Vector256<int>>(m * blocks, pinned: true);
        sbyte* qp = (sbyte*)Unsafe.AsPointer(ref q[0]);
        float* dp = (float*)Unsafe.AsPointer(ref d[0]);
        var bp = (Vector256<int>*)Unsafe.AsPointer(ref bias[0]);
        CpuParallel.For(m, 4L * k, (start, end) =>
        {
            var acts = new QuantizedActivations(k);
            for (int i = start; i < end; i++)
            {
                acts.Quantize(x + (long)i * k, q8_0: true, q8K: false);
                Buffer.MemoryCopy(acts.Q, qp + (long)i * k, k, k);
                Buffer.MemoryCopy(acts.D, dp + (long)i * blocks, 4L * blocks, 4L * blocks);
                for (int b = 0; b < blocks; b++) bp[(long)i * blocks + b] = BiasPattern(qp + (long)i * k + 32 * b);
            }
        });
        int groups = (n + 3) / 4;
        long rowBytes = (long)blocks * Q4Bytes;
        CpuParallel.For(groups, 8L * m * k, (g0, g1) =>
        {
            for (int t0 = 0; t0 < m; t0 += TokenChunk)
            {
                int t1 = Math.Min(m, t0 + TokenChunk);
                for (int g = g0; g < g1; g++)
                    for (int t = t0; t < t1; t += 4)
                        Tile(w, rowBytes, 4 * g, n, qp, dp, bp, t, t1, k, y, ldy);
            }
        });
        GC.KeepAlive(q); GC.KeepAlive(d); GC.KeepAlive(bias);
    }

    // [B0 B1 B0 B1 ...]: B0 = -8 sum of q[8s + t] over s = 0..3, t = 0..3; B1 the same over t = 4..7.
    private static Vector256<int> BiasPattern(sbyte* q)
    {
        int b0 = 0, b1 = 0;
        for (int s = 0; s < 4; s++)
            for (int t = 0; t < 4; t++)
            {
                b0 += q[8 * s + t];
                b1 += q[8 * s + 4 + t];
            }
        return Vector256.Create(-8 * b0, -8 * b1, -8 * b0, -8 * b1, -8 * b0, -8 * b1, -8 * b0, -8 * b1);
    }

    // Rows j0..j0+3 (clamped to n - 1) times tokens t..t+3 (clamped to tEnd - 1); writes the valid outputs.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile(byte* w, long rowBytes, int j0, int n, sbyte* q, float* d, Vector256<int>* bias, int t, int tEnd, int k, float* y, int ldy)
    {
        int blocks = k / 32;
        byte* w0 = w + Math.Min(j0, n - 1) * rowBytes, w1 = w + Math.Min(j0 + 1, n - 1) * rowBytes;
        byte* w2 = w + Math.Min(j0 + 2, n - 1) * rowBytes, w3 = w + Math.Min(j0 + 3, n - 1) * rowBytes;
        int i0 = t, i1 = Math.Min(t + 1, tEnd - 1), i2 = Math.Min(t + 2, tEnd - 1), i3 = Math.Min(t + 3, tEnd - 1);
        sbyte* x0 = q + (long)i0 * k, x1 = q + (long)i1 * k, x2 = q + (long)i2 * k, x3 = q + (long)i3 * k;
        float* d0 = d + (long)i0 * blocks, d1 = d + (long)i1 * blocks, d2 = d + (long)i2 * blocks, d3 = d + (long)i3 * blocks;
        Vector256<int>* c0 = bias + (long)i0 * blocks, c1 = bias + (long)i1 * blocks, c2 = bias + (long)i2 * blocks, c3 = bias + (long)i3 * blocks;
        var low4 = Vector256.Create((byte)0x0F);
        var ones = Vector256.Create((short)1);
        Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0;
        float* table = IntegerRows.HalfTablePointer;
        for (int b = 0; b < blocks; b++)
        {
            long o = (long)b * Q4Bytes;
            var r0 = Sse2.LoadVector128(w0 + o + 2).AsUInt64();
            var r1 = Sse2.LoadVector128(w1 + o + 2).AsUInt64();
            var r2 = Sse2.LoadVector128(w2 + o + 2).AsUInt64();
            var r3 = Sse2.LoadVector128(w3 + o + 2).AsUInt64();
            var lo = Vector256.Create(Sse2.UnpackLow(r0, r1), Sse2.UnpackLow(r2, r3)).AsByte();     // bytes 0..7 of each row
            var hi = Vector256.Create(Sse2.UnpackHigh(r0, r1), Sse2.UnpackHigh(r2, r3)).AsByte();   // bytes 8..15
            var s0 = Avx2.And(lo, low4);
            var s1 = Avx2.And(hi, low4);
            var s2 = Avx2.And(Avx2.ShiftRightLogical(lo.AsUInt16(), 4).AsByte(), low4);
            var s3 = Avx2.And(Avx2.ShiftRightLogical(hi.AsUInt16(), 4).AsByte(), low4);
            float e0 = table[*(ushort*)(w0 + o)], e1 = table[*(ushort*)(w1 + o)], e2 = table[*(ushort*)(w2 + o)], e3 = table[*(ushort*)(w3 + o)];
            var scales = Vector256.Create(e0, e0, e1, e1, e2, e2, e3, e3);
            a0 = Token(s0, s1, s2, s3, x0 + 32 * b, c0[b], scales, d0[b], ones, a0);
            a1 = Token(s0, s1, s2, s3, x1 + 32 * b, c1[b], scales, d1[b], ones, a1);
            a2 = Token(s0, s1, s2, s3, x2 + 32 * b, c2[b], scales, d2[b], ones, a2);
            a3 = Token(s0, s1, s2, s3, x3 + 32 * b, c3[b], scales, d3[b], ones, a3);
        }
        Store(a0, y + (long)i0 * ldy, j0, n);
        if (t + 1 < tEnd) Store(a1, y + (long)i1 * ldy, j0, n);
        if (t + 2 < tEnd) Store(a2, y + (long)i2 * ldy, j0, n);
        if (t + 3 < tEnd) Store(a3, y + (long)i3 * ldy, j0, n);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Token(Vector256<byte> s0, Vector256<byte> s1, Vector256<byte> s2, Vector256<byte> s3, sbyte* x,
        Vector256<int> bias, Vector256<float> scales, float dx, Vector256<short> ones, Vector256<float> acc)
    {
        var p = Avx2.Add(
            Avx2.Add(Avx2.MultiplyAddAdjacent(s0, Vector256.Create(*(long*)x).AsSByte()), Avx2.MultiplyAddAdjacent(s1, Vector256.Create(*(long*)(x + 8)).AsSByte())),
            Avx2.Add(Avx2.MultiplyAddAdjacent(s2, Vector256.Create(*(long*)(x + 16)).AsSByte()), Avx2.MultiplyAddAdjacent(s3, Vector256.Create(*(long*)(x + 24)).AsSByte())));
        var lanes = Avx2.Add(Avx2.MultiplyAddAdjacent(p, ones), bias);
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(lanes), Avx.Multiply(scales, Vector256.Create(dx)), acc);
    }

    // y[j0 + r] = lane 2r + lane 2r + 1, for the rows below n.
    private static void Store(Vector256<float> acc, float* y, int j0, int n)
    {
        for (int r = 0; r < 4 && j0 + r < n; r++) y[j0 + r] = acc.GetElement(2 * r) + acc.GetElement(2 * r + 1);
    }
}
