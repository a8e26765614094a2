// Int4 products with llama.cpp's Q4_0 weights on the CPU (IBackend.MatMulQ4; layout in
// Quantization/QuantType.cs; definition Ops/Reference/MatMulQ4Ref.cs):
//     y [M, N] = x [M, K] @ dequantize(w)^T,   w [N, K / 32 * 18] bytes
// Small M (M <= Gemm.SmallMMax, i.e. decoding): rows of w are split across threads and each is read once
//   per row of x. A block's 16 bytes are split into low and high nibbles, widened to four vectors of 8
//   int32 (minus the bias 8), converted to f32 and multiplied into x with FMAs in registers; the block's sum
//   is scaled by d once (AVX2 + FMA; a scalar loop elsewhere). d is widened with QuantTypes.HalfToSingle, not
//   (float)Half, which alone made the loop 20x slower. The weights are never stored as floats, so
//   the traffic is 0.5625 bytes per weight instead of f32's 4: at M = 1 the product reads 7.1x less memory.
// Larger M: w is expanded panel by panel (8 MiB of f32 rows at a time, in parallel, AVX2) and each panel goes
//   through the packed GEMM into its columns of y (Gemm.Run with ldc = N). Expanding costs N K once against
//   2 M N K flops, and the panel stays in cache while the GEMM packs it.
// F64 (references and gradient checks): plain loops over the expanded blocks.
using System.Buffers;
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

    /// <summary>f32 values of w expanded per panel on the large-M path (8 MiB: 512 rows at K = 4096).</summary>
    private const int Q4PanelValues = 1 << 21;

    public void MatMulQ4(Tensor x, Tensor w, Tensor y)
    {
        const string op = "matmul_q4";
        var (m, n, k) = Quantize.CheckMatMulQ4(x, w, y, op);
        if (m == 0 || n == 0) return;
        int rowBytes = k / 32 * Q4BlockBytes;
        fixed (byte* wq = &Span<byte>(w)[0])
        {
            byte* wp = wq;
            if (x.DType == DType.F64)
            {
                fixed (double* xd = Span<double>(x), yd = Span<double>(y))
                {
                    double* xp = xd, yp = yd;
                    CpuParallel.For(n, 2L * m * k, (start, end) => MatMulQ4F64(xp, wp, yp, m, n, k, start, end));
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
                            for (int i = 0; i < m; i++)
                                yp[(long)i * n + j] = DotQ4_0(wp + (long)j * rowBytes, xp + (long)i * k, k / 32);
                    });
                }
            }
            else
            {
                MatMulQ4Panels(x, wp, y, m, n, k);
            }
        }
    }

    /// <summary>
    /// The large-M path: expand rows [n0, n0 + p) of w into f32 and multiply them with the packed GEMM, p rows
    /// of about <paramref name="panelValues"/> values at a time (a parameter so tests can cross panels at small K).
    /// </summary>
    internal static void MatMulQ4Panels(Tensor x, byte* w, Tensor y, int m, int n, int k, int panelValues = Q4PanelValues)
    {
        int rowBytes = k / 32 * Q4BlockBytes;
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
                        ExpandQ4_0(w0 + (long)r * rowBytes, p0 + (long)r * k, k / 32);
            });
            Gemm.Run(m, rows, k, xOperand, x.Offset, bOperand, 0, Host(y), y.Offset + n0, n, accumulate: false, parallel: true);
        }
        ArrayPool<float>.Shared.Return(panel);
    }

    /// <summary>Rows [start, end) of w times every row of x, in f64.</summary>
    private static void MatMulQ4F64(double* x, byte* w, double* y, int m, int n, int k, int start, int end)
    {
        int blocks = k / 32, rowBytes = blocks * Q4BlockBytes;
        Span<float> values = stackalloc float[32];
        for (int j = start; j < end; j++)
        {
            for (int i = 0; i < m; i++) y[(long)i * n + j] = 0;
            for (int b = 0; b < blocks; b++)
            {
                QuantTypes.DequantizeRowQ4_0(new ReadOnlySpan<byte>(w + (long)j * rowBytes + b * Q4BlockBytes, Q4BlockBytes), values);
                for (int i = 0; i < m; i++)
                {
                    double* xb = x + (long)i * k + b * 32;
                    double acc = 0;
                    for (int e = 0; e < 32; e++) acc += values[e] * xb[e];
                    y[(long)i * n + j] += acc;
                }
            }
        }
    }

    /// <summary>dot(dequantize(row of <paramref name="blocks"/> Q4_0 blocks), x) in f32.</summary>
    internal static float DotQ4_0(byte* row, float* x, int blocks) =>
        Avx2.IsSupported && Fma.IsSupported ? DotQ4_0Avx2(row, x, blocks) : DotQ4_0Scalar(row, x, blocks);

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
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float DotQ4_0Avx2(byte* row, float* x, int blocks)
    {
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        for (int b = 0; b < blocks; b++, row += Q4BlockBytes, x += 32)
        {
            var d = Vector256.Create(QuantTypes.HalfToSingle(*(ushort*)row));
            DecodeQ4_0Avx2(row, out var w0, out var w1, out var w2, out var w3);
            var s0 = Fma.MultiplyAdd(w1, Avx.LoadVector256(x + 8), Avx.Multiply(w0, Avx.LoadVector256(x)));
            var s1 = Fma.MultiplyAdd(w3, Avx.LoadVector256(x + 24), Avx.Multiply(w2, Avx.LoadVector256(x + 16)));
            // Two accumulators: consecutive blocks do not wait on each other's FMA.
            if ((b & 1) == 0) acc0 = Fma.MultiplyAdd(Avx.Add(s0, s1), d, acc0);
            else acc1 = Fma.MultiplyAdd(Avx.Add(s0, s1), d, acc1);
        }
        return Vector256.Sum(Avx.Add(acc0, acc1));
    }

    /// <summary>y [32 blocks] = the values of a row of Q4_0 blocks (AVX2 where available, else the reference loop).</summary>
    internal static void ExpandQ4_0(byte* row, float* y, int blocks)
    {
        if (!Avx2.IsSupported)
        {
            QuantTypes.DequantizeRowQ4_0(new ReadOnlySpan<byte>(row, blocks * Q4BlockBytes), new Span<float>(y, blocks * 32));
            return;
        }
        for (int b = 0; b < blocks; b++, row += Q4BlockBytes, y += 32)
        {
            var d = Vector256.Create(QuantTypes.HalfToSingle(*(ushort*)row));
            DecodeQ4_0Avx2(row, out var w0, out var w1, out var w2, out var w3);
            Avx.Store(y, Avx.Multiply(d, w0));
            Avx.Store(y + 8, Avx.Multiply(d, w1));
            Avx.Store(y + 16, Avx.Multiply(d, w2));
            Avx.Store(y + 24, Avx.Multiply(d, w3));
        }
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
        w0 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(lo));
        w1 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(lo, 8)));
        w2 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(hi));
        w3 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(hi, 8)));
    }

    public void DequantizeQ4(Tensor w, Tensor y)
    {
        const string op = "dequantize_q4";
        var (n, k) = Quantize.CheckDequantizeQ4(w, y, op);
        int rowBytes = k / 32 * Q4BlockBytes;
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
                        ExpandQ4_0(bytes + wOffset + (long)j * rowBytes, values + yOffset + (long)j * k, k / 32);
            });
        }
        else
        {
            var values = new float[(long)n * k];
            CpuParallel.For(n, 2L * k, (start, end) =>
            {
                var bytes = storage.AsSpan<byte>();
                for (int j = start; j < end; j++)
                    QuantTypes.DequantizeRowQ4_0(bytes.Slice(wOffset + j * rowBytes, rowBytes), values.AsSpan(j * k, k));
            });
            var yd = Span<double>(y);
            for (int i = 0; i < values.Length; i++) yd[i] = values[i];
        }
    }
}
