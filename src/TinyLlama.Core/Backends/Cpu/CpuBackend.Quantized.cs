// Products with llama.cpp's block-quantized weights on the CPU (IBackend.MatMulQuantized and
// DequantizeBlocks; layouts in Quantization/QuantType.cs; definition Ops/Reference/MatMulQuantizedRef.cs):
//     y [M, N] = x [M, K] @ dequantize(w)^T,   w [N, K / BlockSize * BlockBytes] bytes (Q4_0, Q8_0, Q4_K, Q6_K)
// Small M (M <= Gemm.SmallMMax, i.e. decoding): rows of w are split across threads and each is read once
//   per row of x (Q4_0, Q8_0) or once in all (Q4_K, Q6_K).
//   Q4_0: a block's 16 bytes are split into low and high nibbles, widened to four vectors of 8 int32 (minus
//     the bias 8), converted to f32 and multiplied into x with FMAs in registers; the block's sum is scaled
//     by d once (AVX2 + FMA; a scalar loop elsewhere). Traffic 0.5625 bytes per weight instead of f32's 4.
//   Q8_0: the same with the 32 int8 weights sign-extended 8 at a time (1.0625 bytes per weight).
//   Q4_K, Q6_K: a super-block (256 weights) is expanded into a 1 KiB stack buffer (AVX2: 32 weights per
//     pair of vector ops, in the reference's f32 operation order so the values are bit-identical) and
//     dotted with each row of x (TensorPrimitives.Dot); 0.5625 / 0.82 bytes per weight.
//   d is widened with QuantTypes.HalfToSingle, not (float)Half, which alone made the Q4_0 loop 20x slower.
// Larger M: w is expanded panel by panel (8 MiB of f32 rows at a time, in parallel, AVX2) and each panel goes
//   through the packed GEMM into its columns of y (Gemm.Run with ldc = N). Expanding costs N K once against
//   2 M N K flops, and the panel stays in cache while the GEMM packs it.
// Integer activations (a scope a caller opens on its thread, UseIntegerActivations; generation opens it, as
//   llama.cpp always runs this way): x is quantized to Q8_0 once per row and Q4_0 weights go through the integer
//   GEMM over their rows repacked in groups of eight (RepackedQ4_0.cs): no f32 expansion, about 3x fewer
//   instructions per weight than the f32 panel path, at the cost of the activations' 8-bit rounding.
// F64 (references and gradient checks): plain loops over blocks expanded by the reference converters.
using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

public sealed unsafe partial class CpuBackend
{
    /// <summary>Bytes of one Q4_0 block.</summary>
    private const int Q4BlockBytes = 18;

    /// <summary>Bytes of one Q8_0 block.</summary>
    private const int Q8BlockBytes = 34;

    /// <summary>Bytes of one Q4_K and one Q6_K super-block (256 weights each).</summary>
    private const int Q4KBlockBytes = 144, Q6KBlockBytes = 210;

    /// <summary>f32 values of w expanded per panel on the large-M path (8 MiB: 512 rows at K = 4096).</summary>
    private const int PanelValues = 1 << 21;

    private static bool HasAvx2Fma => Avx2.IsSupported && Fma.IsSupported;

    [ThreadStatic] private static bool integerActivations;
    [ThreadStatic] private static Q8_0Rows? q8Rows;

    /// <summary>
    /// Until the returned scope is disposed, this thread's <see cref="MatMulQuantized"/> calls with f32 x and Q4_0
    /// weights quantize x to Q8_0 and run the integer GEMM over repacked rows (llama.cpp's arithmetic, see the file
    /// header); other calls and other threads are unchanged. Scopes nest.
    /// </summary>
    public static IntegerActivationsScope UseIntegerActivations(bool enable = true)
    {
        var scope = new IntegerActivationsScope(integerActivations);
        integerActivations = enable;
        return scope;
    }

    /// <summary>Restores the previous setting of <see cref="UseIntegerActivations"/> when disposed.</summary>
    public readonly struct IntegerActivationsScope : IDisposable
    {
        private readonly bool previous;
        internal IntegerActivationsScope(bool previous) => this.previous = previous;
        public void Dispose() => integerActivations = previous;
    }

    public void MatMulQuantized(Tensor x, Tensor w, Tensor y)
    {
        const string op = "matmul_quantized";
        var (m, n, k, traits) = Quantize.CheckMatMulQuantized(x, w, y, op);
        if (m == 0 || n == 0) return;
        var type = traits.Type;
        int rowBytes = traits.RowBytes(k);
        fixed (byte* wq = &Span<byte>(w)[0])
        {
            byte* wp = wq;
            if (x.DType == DType.F64)
            {
                fixed (double* xd = Span<double>(x), yd = Span<double>(y))
                {
                    double* xp = xd, yp = yd;
                    CpuParallel.For(n, 2L * m * k, (start, end) => MatMulBlocksF64(traits, xp, wp, yp, m, n, k, start, end));
                }
            }
            else if (integerActivations && type == QuantType.Q4_0 && RepackedQ4_0.For(w) is { } packed)
            {
                var rows = q8Rows ??= new Q8_0Rows();
                fixed (float* xf = Span<float>(x), yf = Span<float>(y))
                {
                    float* yp = yf;
                    rows.Quantize(xf, m, k);
                    CpuParallel.For(packed.Groups, 2L * m * k * RepackedQ4_0.GroupRows, (g0, g1) => packed.MatMul(rows, yp, n, g0, g1));
                }
            }
            else if (m <= Gemm.SmallMMax)
            {
                fixed (float* xf = Span<float>(x), yf = Span<float>(y))
                {
                    float* xp = xf, yp = yf;
                    CpuParallel.For(n, 2L * m * k, (start, end) =>
                    {
                        for (int j = start; j < end; j++)
                            MatVecRow(type, wp + (long)j * rowBytes, xp, yp + j, m, n, k);
                    });
                }
            }
            else
            {
                MatMulPanels(type, x, wp, y, m, n, k);
            }
        }
    }

    /// <summary>y[i, j] (y at column j, row stride n) = dot(dequantize(row j of w), row i of x) for the m &lt;= 4 rows of x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void MatVecRow(QuantType type, byte* row, float* x, float* y, int m, int n, int k)
    {
        switch (type)
        {
            case QuantType.Q4_0:
                for (int i = 0; i < m; i++) y[(long)i * n] = DotQ4_0(row, x + (long)i * k, k / 32);
                return;
            case QuantType.Q8_0:
                for (int i = 0; i < m; i++) y[(long)i * n] = DotQ8_0(row, x + (long)i * k, k / 32);
                return;
        }
        // K-quants: one super-block expanded once, dotted with every row of x.
        float* values = stackalloc float[256];
        float* acc = stackalloc float[Gemm.SmallMMax];
        for (int i = 0; i < m; i++) acc[i] = 0;
        int blockBytes = type == QuantType.Q4_K ? Q4KBlockBytes : Q6KBlockBytes;
        var v = new ReadOnlySpan<float>(values, 256);
        for (int b = 0; b < k / 256; b++)
        {
            ExpandRow(type, row + (long)b * blockBytes, values, 256);
            for (int i = 0; i < m; i++) acc[i] += TensorPrimitives.Dot(v, new ReadOnlySpan<float>(x + (long)i * k + b * 256, 256));
        }
        for (int i = 0; i < m; i++) y[(long)i * n] = acc[i];
    }

    /// <summary>
    /// The large-M path: expand rows [n0, n0 + p) of w into f32 and multiply them with the packed GEMM, p rows
    /// of about <paramref name="panelValues"/> values at a time (a parameter so tests can cross panels at small K).
    /// </summary>
    internal static void MatMulPanels(QuantType type, Tensor x, byte* w, Tensor y, int m, int n, int k, int panelValues = PanelValues)
    {
        int rowBytes = type.Traits().RowBytes(k);
        int p = Math.Min(n, Math.Max(16, panelValues / k / 16 * 16));
        var panel = ArrayPool<float>.Shared.Rent(p * k);          // (p, K) rows of w as f32, reused across calls
        var panelStorage = new CpuStorage(DType.F32, panel);
        var xOperand = new GemmOperand(Host(x), k, 1);           // x [M, K]
        var bOperand = new GemmOperand(panelStorage, 1, k);      // panel^T [K, p]
        for (int n0 = 0; n0 < n; n0 += p)
        {
            int rows = Math.Min(p, n - n0);
            byte* w0 = w + (long)n0 * rowBytes;
            CpuParallel.For(rows, 2L * k, (start, end) =>
            {
                fixed (float* p0 = panel)
                    for (int r = start; r < end; r++)
                        ExpandRow(type, w0 + (long)r * rowBytes, p0 + (long)r * k, k);
            });
            Gemm.Run(m, rows, k, xOperand, x.Offset, bOperand, 0, Host(y), y.Offset + n0, n, accumulate: false, parallel: true);
        }
        ArrayPool<float>.Shared.Return(panel);
    }

    /// <summary>Rows [start, end) of w times every row of x, in f64, each block expanded by the reference converter.</summary>
    private static void MatMulBlocksF64(QuantTraits traits, double* x, byte* w, double* y, int m, int n, int k, int start, int end)
    {
        int size = traits.BlockSize, blockBytes = traits.BlockBytes, blocks = k / size, rowBytes = blocks * blockBytes;
        Span<float> values = stackalloc float[size];
        for (int j = start; j < end; j++)
        {
            for (int i = 0; i < m; i++) y[(long)i * n + j] = 0;
            for (int b = 0; b < blocks; b++)
            {
                traits.Dequantize(new ReadOnlySpan<byte>(w + (long)j * rowBytes + (long)b * blockBytes, blockBytes), values);
                for (int i = 0; i < m; i++)
                {
                    double* xb = x + (long)i * k + (long)b * size;
                    double acc = 0;
                    for (int e = 0; e < size; e++) acc += values[e] * xb[e];
                    y[(long)i * n + j] += acc;
                }
            }
        }
    }

    /// <summary>y [K] = the values of one row of K weights in <paramref name="type"/>'s blocks (AVX2 where available, else the reference).</summary>
    internal static void ExpandRow(QuantType type, byte* row, float* y, int k)
    {
        switch (type)
        {
            case QuantType.Q4_0: ExpandQ4_0(row, y, k / 32); break;
            case QuantType.Q8_0: ExpandQ8_0(row, y, k / 32); break;
            case QuantType.Q4_K: ExpandQ4_K(row, y, k / 256); break;
            case QuantType.Q6_K: ExpandQ6_K(row, y, k / 256); break;
            default: throw new ArgumentOutOfRangeException(nameof(type), $"unknown quantization type {(int)type}");
        }
    }

    // ---------------------------------------------------------------- Q4_0

    /// <summary>dot(dequantize(row of <paramref name="blocks"/> Q4_0 blocks), x) in f32.</summary>
    internal static float DotQ4_0(byte* row, float* x, int blocks) =>
        HasAvx2Fma ? DotQ4_0Avx2(row, x, blocks) : DotQ4_0Scalar(row, x, blocks);

    /// <summary>The portable definition of <see cref="DotQ4_0"/>: per block, sum (q - 8) x, times d.</summary>
    internal static float DotQ4_0Scalar(byte* row, float* x, int blocks)
    {
        float acc = 0;
        for (int b = 0; b < blocks; b++, row += Q4BlockBytes, x += 32)
        {
            float d = QuantTypes.HalfToSingle(*(ushort*)row);
            float sum = 0;
            for (int j = 0; j < 16; j++)
            {
                byte q = row[2 + j];
                sum += ((q & 0x0F) - 8) * x[j] + ((q >> 4) - 8) * x[j + 16];
            }
            acc += sum * d;
        }
        return acc;
    }

    /// <summary><see cref="DotQ4_0"/> with AVX2 + FMA: 32 weights expanded in four registers per block.</summary>
    internal static float DotQ4_0Avx2(byte* row, float* x, int blocks) => DotBlocks32Avx2<Q4_0Decoder>(row, x, blocks);

    /// <summary>y [32 blocks] = the values of a row of Q4_0 blocks (AVX2 where available, else the reference loop).</summary>
    internal static void ExpandQ4_0(byte* row, float* y, int blocks) => ExpandBlocks32<Q4_0Decoder>(QuantType.Q4_0, row, y, blocks);

    private readonly struct Q4_0Decoder : IBlock32Decoder
    {
        public static int BlockBytes => Q4BlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Decode(byte* block, out Vector256<float> w0, out Vector256<float> w1, out Vector256<float> w2, out Vector256<float> w3) =>
            DecodeQ4_0Avx2(block, out w0, out w1, out w2, out w3);
    }

    /// <summary>The 32 nibbles of the Q4_0 block at <paramref name="block"/> minus 8, as f32: weights 0..7, 8..15, 16..23, 24..31.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void DecodeQ4_0Avx2(byte* block, out Vector256<float> w0, out Vector256<float> w1, out Vector256<float> w2, out Vector256<float> w3)
    {
        var low4 = Vector128.Create((byte)0x0F);
        var bias = Vector128.Create((byte)8);
        var q = Sse2.LoadVector128(block + 2);                                         // 16 bytes: weight j (low nibble), j + 16 (high)
        var lo = Sse2.Subtract(Sse2.And(q, low4), bias).AsSByte();                    // weights 0..15 as q - 8
        var hi = Sse2.Subtract(Sse2.And(Sse2.ShiftRightLogical(q.AsUInt16(), 4).AsByte(), low4), bias).AsSByte();   // 16..31
        WidenSigned(lo, out w0, out w1);
        WidenSigned(hi, out w2, out w3);
    }

    // ---------------------------------------------------------------- Q8_0

    /// <summary>dot(dequantize(row of <paramref name="blocks"/> Q8_0 blocks), x) in f32.</summary>
    internal static float DotQ8_0(byte* row, float* x, int blocks) =>
        HasAvx2Fma ? DotQ8_0Avx2(row, x, blocks) : DotQ8_0Scalar(row, x, blocks);

    /// <summary>The portable definition of <see cref="DotQ8_0"/>: per block, sum q x, times d.</summary>
    internal static float DotQ8_0Scalar(byte* row, float* x, int blocks)
    {
        float acc = 0;
        for (int b = 0; b < blocks; b++, row += Q8BlockBytes, x += 32)
        {
            float d = QuantTypes.HalfToSingle(*(ushort*)row);
            sbyte* q = (sbyte*)(row + 2);
            float sum = 0;
            for (int j = 0; j < 32; j++) sum += q[j] * x[j];
            acc += sum * d;
        }
        return acc;
    }

    /// <summary><see cref="DotQ8_0"/> with AVX2 + FMA: 32 int8 weights sign-extended into four registers per block.</summary>
    internal static float DotQ8_0Avx2(byte* row, float* x, int blocks) => DotBlocks32Avx2<Q8_0Decoder>(row, x, blocks);

    /// <summary>y [32 blocks] = the values of a row of Q8_0 blocks (AVX2 where available, else the reference loop).</summary>
    internal static void ExpandQ8_0(byte* row, float* y, int blocks) => ExpandBlocks32<Q8_0Decoder>(QuantType.Q8_0, row, y, blocks);

    private readonly struct Q8_0Decoder : IBlock32Decoder
    {
        public static int BlockBytes => Q8BlockBytes;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Decode(byte* block, out Vector256<float> w0, out Vector256<float> w1, out Vector256<float> w2, out Vector256<float> w3) =>
            DecodeQ8_0Avx2(block, out w0, out w1, out w2, out w3);
    }

    /// <summary>The 32 int8 weights of the Q8_0 block at <paramref name="block"/> as f32, 8 per register.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void DecodeQ8_0Avx2(byte* block, out Vector256<float> w0, out Vector256<float> w1, out Vector256<float> w2, out Vector256<float> w3)
    {
        sbyte* q = (sbyte*)(block + 2);
        w0 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q));
        w1 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + 8));
        w2 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + 16));
        w3 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + 24));
    }

    // ---------------------------------------------------------------- Q4_K

    /// <summary>y [256 blocks] = the values of a row of Q4_K super-blocks (AVX2 where available, else the reference).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ExpandQ4_K(byte* row, float* y, int blocks)
    {
        if (!HasAvx2Fma)
        {
            QuantTypes.DequantizeRowQ4_K(new ReadOnlySpan<byte>(row, blocks * Q4KBlockBytes), new Span<float>(y, blocks * 256));
            return;
        }
        var low4 = Vector256.Create((byte)0x0F);
        for (int b = 0; b < blocks; b++, row += Q4KBlockBytes, y += 256)
        {
            float d = QuantTypes.HalfToSingle(*(ushort*)row);
            float dmin = QuantTypes.HalfToSingle(*(ushort*)(row + 2));
            var scales = new ReadOnlySpan<byte>(row + 4, 12);
            for (int p = 0; p < 4; p++)
            {
                // Sub-blocks 2p (low nibbles of bytes 32p..32p+31) and 2p + 1 (high nibbles); weight = (d sc) q - dmin m,
                // one FMA whose product is exact (11 + 6 + 4 bits), so it rounds as the reference's subtraction does.
                var q = Avx.LoadVector256(row + 16 + 32 * p);
                var lo = Avx2.And(q, low4);
                var hi = Avx2.And(Avx2.ShiftRightLogical(q.AsUInt16(), 4).AsByte(), low4);
                var (sc0, m0) = QuantTypes.ScaleMinQ4_K(2 * p, scales);
                var (sc1, m1) = QuantTypes.ScaleMinQ4_K(2 * p + 1, scales);
                StoreAffine32(lo, Vector256.Create(d * sc0), Vector256.Create(-(dmin * m0)), y + 64 * p);
                StoreAffine32(hi, Vector256.Create(d * sc1), Vector256.Create(-(dmin * m1)), y + 64 * p + 32);
            }
        }
    }

    /// <summary>y[0..32) = scale q + offset for the 32 unsigned bytes q (FMA).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreAffine32(Vector256<byte> q, Vector256<float> scale, Vector256<float> offset, float* y)
    {
        var lower = q.GetLower();
        var upper = q.GetUpper();
        Avx.Store(y, Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(lower)), scale, offset));
        Avx.Store(y + 8, Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(lower, 8))), scale, offset));
        Avx.Store(y + 16, Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(upper)), scale, offset));
        Avx.Store(y + 24, Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(upper, 8))), scale, offset));
    }

    // ---------------------------------------------------------------- Q6_K

    /// <summary>y [256 blocks] = the values of a row of Q6_K super-blocks (AVX2 where available, else the reference).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ExpandQ6_K(byte* row, float* y, int blocks)
    {
        if (!HasAvx2Fma)
        {
            QuantTypes.DequantizeRowQ6_K(new ReadOnlySpan<byte>(row, blocks * Q6KBlockBytes), new Span<float>(y, blocks * 256));
            return;
        }
        var low4 = Vector256.Create((byte)0x0F);
        for (int b = 0; b < blocks; b++, row += Q6KBlockBytes, y += 256)
        {
            float d = QuantTypes.HalfToSingle(*(ushort*)(row + 208));
            sbyte* sc = (sbyte*)(row + 192);
            for (int h = 0; h < 2; h++, sc += 8)
            {
                var qlA = Avx.LoadVector256(row + 64 * h);          // quarters 0 (low nibbles) and 2 (high)
                var qlB = Avx.LoadVector256(row + 64 * h + 32);     // quarters 1 and 3
                var qh = Avx.LoadVector256(row + 128 + 32 * h).AsUInt16();
                float* o = y + 128 * h;
                StoreQ6_KQuarter(Avx2.And(qlA, low4), qh, d * sc[0], d * sc[1], o);
                StoreQ6_KQuarter(Avx2.And(qlB, low4), Avx2.ShiftRightLogical(qh, 2), d * sc[2], d * sc[3], o + 32);
                StoreQ6_KQuarter(Avx2.And(Avx2.ShiftRightLogical(qlA.AsUInt16(), 4).AsByte(), low4), Avx2.ShiftRightLogical(qh, 4), d * sc[4], d * sc[5], o + 64);
                StoreQ6_KQuarter(Avx2.And(Avx2.ShiftRightLogical(qlB.AsUInt16(), 4).AsByte(), low4), Avx2.ShiftRightLogical(qh, 6), d * sc[6], d * sc[7], o + 96);
            }
        }
    }

    /// <summary>
    /// One Q6_K quarter of 32 weights: low 4 bits per byte in <paramref name="low"/>, high 2 bits in bits 0..1 of
    /// each byte of <paramref name="high"/>; y = (d sc) (q - 32), weights 0..15 with scale0 = d sc, 16..31 with scale1,
    /// one rounding as the reference.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreQ6_KQuarter(Vector256<byte> low, Vector256<ushort> high, float scale0, float scale1, float* y)
    {
        var top = Avx2.And(high.AsByte(), Vector256.Create((byte)3));                                  // 0..3 per byte
        var q = Avx2.Subtract(Avx2.Or(low, Avx2.ShiftLeftLogical(top.AsUInt16(), 4).AsByte()), Vector256.Create((byte)32)).AsSByte();
        var s0 = Vector256.Create(scale0);
        var s1 = Vector256.Create(scale1);
        WidenSigned(q.GetLower(), out var w0, out var w1);
        WidenSigned(q.GetUpper(), out var w2, out var w3);
        Avx.Store(y, Avx.Multiply(s0, w0));
        Avx.Store(y + 8, Avx.Multiply(s0, w1));
        Avx.Store(y + 16, Avx.Multiply(s1, w2));
        Avx.Store(y + 24, Avx.Multiply(s1, w3));
    }

    // ---------------------------------------------------------------- shared AVX2 pieces

    /// <summary>A 32-weight block that starts with its binary16 scale d (Q4_0, Q8_0), decoded to f32 weights before d.</summary>
    private unsafe interface IBlock32Decoder
    {
        /// <summary>Bytes per block.</summary>
        static abstract int BlockBytes { get; }

        /// <summary>The block's 32 weights without d, as f32: weights 0..7, 8..15, 16..23, 24..31.</summary>
        static abstract void Decode(byte* block, out Vector256<float> w0, out Vector256<float> w1, out Vector256<float> w2, out Vector256<float> w3);
    }

    /// <summary>dot(dequantize(row), x) over 32-weight blocks with AVX2 + FMA: per block, the decoded weights dotted with x, times d.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotBlocks32Avx2<TDecoder>(byte* row, float* x, int blocks) where TDecoder : struct, IBlock32Decoder
    {
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        for (int b = 0; b < blocks; b++, row += TDecoder.BlockBytes, x += 32)
        {
            var d = Vector256.Create(QuantTypes.HalfToSingle(*(ushort*)row));
            TDecoder.Decode(row, out var w0, out var w1, out var w2, out var w3);
            var s0 = Fma.MultiplyAdd(w1, Avx.LoadVector256(x + 8), Avx.Multiply(w0, Avx.LoadVector256(x)));
            var s1 = Fma.MultiplyAdd(w3, Avx.LoadVector256(x + 24), Avx.Multiply(w2, Avx.LoadVector256(x + 16)));
            // Two accumulators: consecutive blocks do not wait on each other's FMA.
            if ((b & 1) == 0) acc0 = Fma.MultiplyAdd(Avx.Add(s0, s1), d, acc0);
            else acc1 = Fma.MultiplyAdd(Avx.Add(s0, s1), d, acc1);
        }
        return Vector256.Sum(Avx.Add(acc0, acc1));
    }

    /// <summary>y [32 blocks] = the values of a row of 32-weight blocks (AVX2 where available, else <paramref name="type"/>'s reference).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ExpandBlocks32<TDecoder>(QuantType type, byte* row, float* y, int blocks) where TDecoder : struct, IBlock32Decoder
    {
        if (!HasAvx2Fma)
        {
            type.Traits().Dequantize(new ReadOnlySpan<byte>(row, blocks * TDecoder.BlockBytes), new Span<float>(y, blocks * 32));
            return;
        }
        for (int b = 0; b < blocks; b++, row += TDecoder.BlockBytes, y += 32)
        {
            var d = Vector256.Create(QuantTypes.HalfToSingle(*(ushort*)row));
            TDecoder.Decode(row, out var w0, out var w1, out var w2, out var w3);
            Avx.Store(y, Avx.Multiply(d, w0));
            Avx.Store(y + 8, Avx.Multiply(d, w1));
            Avx.Store(y + 16, Avx.Multiply(d, w2));
            Avx.Store(y + 24, Avx.Multiply(d, w3));
        }
    }

    /// <summary>The 16 signed bytes of q as f32: bytes 0..7 in lo, 8..15 in hi.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WidenSigned(Vector128<sbyte> q, out Vector256<float> lo, out Vector256<float> hi)
    {
        lo = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q));
        hi = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(q, 8)));
    }

    // ---------------------------------------------------------------- dequantize

    public void DequantizeBlocks(Tensor w, Tensor y)
    {
        const string op = "dequantize_blocks";
        var (n, k, traits) = Quantize.CheckDequantize(w, y, op);
        var type = traits.Type;
        int rowBytes = traits.RowBytes(k);
        var storage = Host(w);
        int wOffset = w.Offset;
        if (y.DType == DType.F32)
        {
            var yHost = Host(y);
            int yOffset = y.Offset;
            CpuParallel.For(n, 2L * k, (start, end) =>
            {
                fixed (byte* bytes = storage.AsSpan<byte>())
                fixed (float* values = yHost.AsSpan<float>())
                    for (int j = start; j < end; j++)
                        ExpandRow(type, bytes + wOffset + (long)j * rowBytes, values + yOffset + (long)j * k, k);
            });
        }
        else
        {
            var values = new float[(long)n * k];
            CpuParallel.For(n, 2L * k, (start, end) =>
            {
                var bytes = storage.AsSpan<byte>();
                for (int j = start; j < end; j++)
                    traits.Dequantize(bytes.Slice(wOffset + j * rowBytes, rowBytes), values.AsSpan(j * k, k));
            });
            var yd = Span<double>(y);
            for (int i = 0; i < values.Length; i++) yd[i] = values[i];
        }
    }
}
