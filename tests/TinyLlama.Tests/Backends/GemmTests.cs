// The CPU GEMM (Backends/Cpu/Gemm*.cs) against a naive f64 triple loop written here: every kernel
// path this CPU can run (AVX-512, AVX2, portable), odd sizes (1, primes, non-multiples of the tiles),
// transposed / strided / broadcast (stride 0) operands, accumulate, f16 / bf16 inputs, f64, small
// cache blocks (so every blocking loop runs several times on small inputs), the batched
// CpuBackend.MatMul paths, and an FsCheck property through the public Tensor.MatMul.
//
// Tolerance. A dot product of length K computed in precision u (f32: 2^-24, f64: 2^-53) with
// fused multiply-adds has error at most about K u sum_p |a_p b_p| (Higham, "Accuracy and Stability
// of Numerical Algorithms", 2nd ed., section 3.1), and the rounding errors behave like a random walk,
// so in practice the error grows like sqrt(K) u sum_p |a_p b_p|. We allow
//     |c - c_ref| <= 4 sqrt(K) u sum_p |a_p b_p|  (+ u |c0| when accumulating into c0),
// which sits far above the observed error of a correct GEMM yet far below the size of any indexing
// bug (a dropped, doubled or misplaced term changes c by about |a_p b_p|, i.e. ~sum/K, while the
// bound is ~1e-5 of the sum for K ~ 300). f16/bf16 inputs are widened exactly, so the reference uses
// the widened values and the f32 bound applies unchanged.
using FsCheck;
using FsCheck.Fluent;
using FsCheck.Xunit;
using TinyLlama.Backends.Cpu;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Backends;

public class GemmTests
{
    /// <summary>Kernel paths by name (GemmKernel is internal); unsupported ones are skipped.</summary>
    public static TheoryData<string> Kernels => new() { "Avx512", "Avx2", "Portable" };

    /// <summary>(m, n, k): 1, primes, tile multiples and non-multiples (MR 4 or 6, NR 8, 16 or 32), K past one 256 block.</summary>
    private static readonly (int M, int N, int K)[] Sizes =
    [
        (1, 1, 1), (1, 17, 3), (5, 1, 7), (2, 3, 1), (6, 16, 8), (4, 32, 5), (7, 13, 11), (12, 48, 64),
        (13, 31, 257), (37, 41, 43), (61, 97, 2), (97, 61, 300), (64, 64, 64), (131, 67, 19),
    ];

    /// <summary>How an operand is laid out in its storage.</summary>
    public enum Layout
    {
        /// <summary>Dense row-major at offset 0.</summary>
        RowMajor,
        /// <summary>A transposed view: the storage holds the operand's transpose row-major (row stride 1).</summary>
        Transposed,
        /// <summary>Every other column of a padded row-major buffer, from offset 5.</summary>
        Strided,
        /// <summary>Row stride 0: one row expanded to all rows.</summary>
        Broadcast,
    }

    /// <summary>An operand: its storage, its elements as doubles (after rounding to the storage dtype), and its view.</summary>
    private sealed record Operand(CpuStorage Storage, double[] Values, int Offset, int RowStride, int ColStride, int Rows, int Cols)
    {
        public double this[int i, int j] => Values[Offset + i * RowStride + j * ColStride];
        internal GemmOperand View => new(Storage, RowStride, ColStride);
    }

    private static Operand MakeOperand(Random rng, DType dtype, int rows, int cols, Layout layout)
    {
        (int offset, int rs, int cs) = layout switch
        {
            Layout.RowMajor => (0, cols, 1),
            Layout.Transposed => (0, 1, rows),
            Layout.Strided => (5, 2 * cols + 3, 2),
            Layout.Broadcast => (2, 0, 1),
            _ => throw new ArgumentOutOfRangeException(nameof(layout)),
        };
        int length = offset + (rows - 1) * rs + (cols - 1) * cs + 1 + 4;
        var values = new double[length];
        for (int i = 0; i < length; i++) values[i] = 2 * rng.NextDouble() - 1;
        Array data;
        switch (dtype)
        {
            case DType.F32: { var d = new float[length]; for (int i = 0; i < length; i++) { d[i] = (float)values[i]; values[i] = d[i]; } data = d; break; }
            case DType.F64: data = (double[])values.Clone(); break;
            case DType.F16: { var d = new Half[length]; for (int i = 0; i < length; i++) { d[i] = (Half)values[i]; values[i] = (double)d[i]; } data = d; break; }
            case DType.BF16: { var d = new BFloat16[length]; for (int i = 0; i < length; i++) { d[i] = BFloat16.FromSingle((float)values[i]); values[i] = d[i].ToSingle(); } data = d; break; }
            default: throw new ArgumentOutOfRangeException(nameof(dtype));
        }
        return new Operand(new CpuStorage(dtype, data), values, offset, rs, cs, rows, cols);
    }

    /// <summary>
    /// Runs Gemm.Run on C [m, n] stored with leading dimension n + 3 from offset 2 (the gaps hold a
    /// sentinel that must survive), and checks every element against the naive f64 triple loop.
    /// </summary>
    private static void CheckGemm(int m, int n, int k, Operand a, Operand b, DType cType, bool accumulate, bool parallel, string kernel, int kc = 0, int mc = 0, int nc = 0)
    {
        const double Sentinel = 12345.0;
        int ldc = n + 3, cOffset = 2, length = cOffset + m * ldc;
        var rng = new Random(m * 7919 + n * 31 + k);
        var c0 = new double[length];
        for (int i = 0; i < length; i++) c0[i] = Sentinel;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c0[cOffset + i * ldc + j] = accumulate ? 2 * rng.NextDouble() - 1 : Sentinel; // garbage when not accumulating: must be overwritten
        CpuStorage c = cType == DType.F64
            ? new CpuStorage(DType.F64, (double[])c0.Clone())
            : new CpuStorage(DType.F32, Array.ConvertAll(c0, v => (float)v));
        if (cType == DType.F32) for (int i = 0; i < length; i++) c0[i] = (float)c0[i];

        var options = new GemmOptions(Enum.Parse<GemmKernel>(kernel), kc, mc, nc);
        Gemm.Run(m, n, k, a.View, a.Offset, b.View, b.Offset, c, cOffset, ldc, accumulate, parallel, options);

        double[] got = cType == DType.F64 ? c.AsSpan<double>().ToArray() : Array.ConvertAll(c.AsSpan<float>().ToArray(), v => (double)v);
        double u = cType == DType.F64 ? Math.Pow(2, -53) : Math.Pow(2, -24);
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                // The naive triple loop in f64, and sum |a||b| for the error bound.
                double sum = 0, abs = 0;
                for (int p = 0; p < k; p++)
                {
                    double t = a[i, p] * b[p, j];
                    sum += t;
                    abs += Math.Abs(t);
                }
                double before = c0[cOffset + i * ldc + j];
                double expected = accumulate ? before + sum : sum;
                double tol = 4 * Math.Sqrt(Math.Max(k, 1)) * u * abs + (accumulate ? u * Math.Abs(before) * 2 : 0) + 1e-300;
                double actual = got[cOffset + i * ldc + j];
                if (!(Math.Abs(actual - expected) <= tol))
                    Assert.Fail($"{kernel} m={m} n={n} k={k} kc={kc} mc={mc} nc={nc} acc={accumulate} par={parallel}: C[{i},{j}] = {actual:G9}, expected {expected:G9} (tolerance {tol:G3})");
            }
            for (int j = n; j < ldc && cOffset + i * ldc + j < length; j++)
                Assert.True(got[cOffset + i * ldc + j] == Sentinel, $"{kernel}: wrote outside C at row {i}, column {j}");
        }
        Assert.True(got[0] == Sentinel && got[1] == Sentinel, $"{kernel}: wrote before C");
    }

    private static void SkipUnsupported(string kernel) =>
        Skip.IfNot(Gemm.IsSupported(Enum.Parse<GemmKernel>(kernel)), $"{kernel} GEMM kernel is not supported on this CPU");

    [SkippableTheory]
    [MemberData(nameof(Kernels))]
    public void F32MatchesNaiveAtOddSizes(string kernel)
    {
        SkipUnsupported(kernel);
        var rng = new Random(1);
        foreach (var (m, n, k) in Sizes)
        {
            var a = MakeOperand(rng, DType.F32, m, k, Layout.RowMajor);
            var b = MakeOperand(rng, DType.F32, k, n, Layout.RowMajor);
            CheckGemm(m, n, k, a, b, DType.F32, accumulate: false, parallel: false, kernel);
            CheckGemm(m, n, k, a, b, DType.F32, accumulate: false, parallel: true, kernel);
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Kernels))]
    public void SmallBlocksRunEveryLoopSeveralTimes(string kernel)
    {
        // KC 7, MC 12, NC 40 (rounded up to tile multiples) make the K, M and N block loops, the
        // accumulation across K blocks, and the parallel split all run on small matrices.
        SkipUnsupported(kernel);
        var rng = new Random(2);
        foreach (var (m, n, k) in new[] { (1, 1, 1), (13, 31, 29), (37, 101, 43), (97, 61, 300), (50, 200, 16) })
        {
            var a = MakeOperand(rng, DType.F32, m, k, Layout.RowMajor);
            var b = MakeOperand(rng, DType.F32, k, n, Layout.RowMajor);
            foreach (bool parallel in new[] { false, true })
            {
                CheckGemm(m, n, k, a, b, DType.F32, accumulate: false, parallel, kernel, kc: 7, mc: 12, nc: 40);
                CheckGemm(m, n, k, a, b, DType.F32, accumulate: true, parallel, kernel, kc: 7, mc: 12, nc: 40);
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Kernels))]
    public void TransposedStridedAndBroadcastOperands(string kernel)
    {
        SkipUnsupported(kernel);
        var rng = new Random(3);
        var layouts = Enum.GetValues<Layout>();
        foreach (var (m, n, k) in new[] { (1, 1, 1), (7, 13, 11), (37, 41, 43), (6, 16, 257) })
            foreach (var la in layouts)
                foreach (var lb in layouts)
                {
                    var a = MakeOperand(rng, DType.F32, m, k, la);
                    var b = MakeOperand(rng, DType.F32, k, n, lb);
                    CheckGemm(m, n, k, a, b, DType.F32, accumulate: false, parallel: true, kernel);
                }
    }

    [SkippableTheory]
    [MemberData(nameof(Kernels))]
    public void AccumulateAddsToC(string kernel)
    {
        SkipUnsupported(kernel);
        var rng = new Random(4);
        foreach (var (m, n, k) in Sizes)
        {
            var a = MakeOperand(rng, DType.F32, m, k, Layout.Transposed);
            var b = MakeOperand(rng, DType.F32, k, n, Layout.RowMajor);
            CheckGemm(m, n, k, a, b, DType.F32, accumulate: true, parallel: true, kernel);
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Kernels))]
    public void F16AndBF16InputsAccumulateInF32(string kernel)
    {
        SkipUnsupported(kernel);
        var rng = new Random(5);
        foreach (var dtype in new[] { DType.F16, DType.BF16 })
            foreach (var (m, n, k) in new[] { (1, 1, 1), (7, 13, 11), (37, 41, 43), (13, 31, 257), (64, 64, 64) })
                foreach (var (la, lb) in new[] { (Layout.RowMajor, Layout.RowMajor), (Layout.Transposed, Layout.Transposed), (Layout.Strided, Layout.Transposed) })
                {
                    var a = MakeOperand(rng, dtype, m, k, la);
                    var b = MakeOperand(rng, dtype, k, n, lb);
                    CheckGemm(m, n, k, a, b, DType.F32, accumulate: false, parallel: true, kernel);
                }
        // Mixed: an f32 activation times a bf16 weight.
        var x = MakeOperand(rng, DType.F32, 19, 70, Layout.RowMajor);
        var w = MakeOperand(rng, DType.BF16, 70, 45, Layout.Transposed);
        CheckGemm(19, 45, 70, x, w, DType.F32, accumulate: false, parallel: false, kernel);
    }

    [SkippableTheory]
    [MemberData(nameof(Kernels))]
    public void F16AndBF16WideningIsExactForEveryBitPattern(string kernel)
    {
        // C [1, 65536] = [[1]] @ B [1, 65536] with B holding every 16-bit pattern: 1 * x is exact,
        // so C must equal the widened value exactly (subnormals and infinities included; NaNs stay NaN). The rows of B are packed
        // by the vectorised widening (unit column stride), the column view by the element path.
        SkipUnsupported(kernel);
        var one = MakeOperand(new Random(8), DType.F32, 1, 1, Layout.RowMajor);
        one.Storage.AsSpan<float>()[0] = 1;
        foreach (var dtype in new[] { DType.F16, DType.BF16 })
        {
            Array data;
            var expected = new float[65536];
            if (dtype == DType.F16)
            {
                var h = new Half[65536];
                for (int i = 0; i < h.Length; i++) { h[i] = BitConverter.UInt16BitsToHalf((ushort)i); expected[i] = (float)h[i]; }
                data = h;
            }
            else
            {
                var bf = new BFloat16[65536];
                for (int i = 0; i < bf.Length; i++) { bf[i] = new BFloat16((ushort)i); expected[i] = bf[i].ToSingle(); }
                data = bf;
            }
            var storage = new CpuStorage(dtype, data);
            foreach (bool asRow in new[] { true, false })
            {
                var c = new CpuStorage(DType.F32, new float[65536]);
                var options = new GemmOptions(Enum.Parse<GemmKernel>(kernel));
                if (asRow) // B [1, 65536] with column stride 1
                    Gemm.Run(1, 65536, 1, one.View, 0, new GemmOperand(storage, 65536, 1), 0, c, 0, 65536, false, false, options);
                else       // B^T: C [65536, 1] = A [65536, 1] @ [[1]], A with row stride 1
                    Gemm.Run(65536, 1, 1, new GemmOperand(storage, 1, 65536), 0, one.View, 0, c, 0, 1, false, false, options);
                var got = c.AsSpan<float>();
                for (int i = 0; i < 65536; i++)
                {
                    // Equal as values: a sum that starts from +0 turns -0 into +0, as in any GEMM.
                    bool same = float.IsNaN(expected[i]) ? float.IsNaN(got[i]) : got[i] == expected[i];
                    Assert.True(same, $"{dtype} bits 0x{i:X4} ({(asRow ? "row" : "column")}): got {got[i]:R}, expected {expected[i]:R}");
                }
            }
        }
    }

    [SkippableTheory]
    [MemberData(nameof(Kernels))]
    public void F64MatchesNaive(string kernel)
    {
        SkipUnsupported(kernel);
        var rng = new Random(6);
        foreach (var (m, n, k) in Sizes)
        {
            var a = MakeOperand(rng, DType.F64, m, k, Layout.RowMajor);
            var b = MakeOperand(rng, DType.F64, k, n, Layout.Transposed);
            CheckGemm(m, n, k, a, b, DType.F64, accumulate: false, parallel: true, kernel);
            CheckGemm(m, n, k, a, b, DType.F64, accumulate: true, parallel: false, kernel, kc: 5, mc: 8, nc: 24);
        }
    }

    [Fact]
    public void SmallMPathMatchesNaive()
    {
        // M <= 4 with Auto reads B unpacked (Gemm.Small.cs): B row-major (axpy form), B transposed
        // with A row-major (dot form), and layouts that fall back to the blocked path; N and K large
        // enough for several column chunks run in parallel.
        var rng = new Random(9);
        foreach (var dtype in new[] { DType.F32, DType.F64 })
            foreach (var (m, n, k) in new[] { (1, 1, 1), (1, 17, 3), (2, 1100, 300), (3, 513, 7), (4, 2000, 257), (4, 65, 1000) })
                foreach (var (la, lb) in new[] { (Layout.RowMajor, Layout.RowMajor), (Layout.RowMajor, Layout.Transposed), (Layout.Transposed, Layout.Transposed), (Layout.Strided, Layout.Strided) })
                {
                    var a = MakeOperand(rng, dtype, m, k, la);
                    var b = MakeOperand(rng, dtype, k, n, lb);
                    CheckGemm(m, n, k, a, b, dtype, accumulate: false, parallel: true, "Auto");
                    CheckGemm(m, n, k, a, b, dtype, accumulate: true, parallel: false, "Auto");
                }
    }

    [Fact]
    public void EmptyKZeroesOrKeepsC()
    {
        var rng = new Random(7);
        var a = MakeOperand(rng, DType.F32, 3, 1, Layout.RowMajor);
        var b = MakeOperand(rng, DType.F32, 1, 4, Layout.RowMajor);
        var c = new CpuStorage(DType.F32, new float[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 });
        Gemm.Run(3, 4, 0, a.View, 0, b.View, 0, c, 0, 4, accumulate: true, parallel: false);
        Assert.Equal(new float[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, c.AsSpan<float>().ToArray());
        Gemm.Run(3, 4, 0, a.View, 0, b.View, 0, c, 0, 4, accumulate: false, parallel: false);
        Assert.Equal(new float[12], c.AsSpan<float>().ToArray());
    }

    [SkippableTheory]
    [MemberData(nameof(Kernels))]
    public void BatchedMatMulMatchesPerMatrixReference(string kernel)
    {
        // Through CpuBackend.MatMul with the global kernel override: attention-like batches of many
        // small matrices (split across the batch) and a few larger ones (split inside each GEMM),
        // with a transposed, broadcast right operand (k^T viewed by permuting, batch dim expanded).
        SkipUnsupported(kernel);
        var saved = Gemm.KernelOverride;
        try
        {
            Gemm.KernelOverride = Enum.Parse<GemmKernel>(kernel);
            foreach (var (batch, t, d) in new[] { (12, 17, 8), (3, 130, 70) })
            {
                var q = Tensor.RandN([batch, t, d], new Generator(11));
                var kT = Tensor.RandN([1, t, d], new Generator(12)).Expand(batch, t, d).MT; // [batch, d, t], strides (0, 1, d)
                var s = Tensor.MatMul(q, kT).ToArray<double>();                          // [batch, t, t]
                var qv = q.ToArray<double>();
                var kv = kT.Contiguous().ToArray<double>();
                for (int bi = 0; bi < batch; bi++)
                    for (int i = 0; i < t; i++)
                        for (int j = 0; j < t; j++)
                        {
                            double sum = 0, abs = 0;
                            for (int p = 0; p < d; p++)
                            {
                                double x = qv[(bi * t + i) * d + p] * kv[(bi * d + p) * t + j];
                                sum += x;
                                abs += Math.Abs(x);
                            }
                            double got = s[(bi * t + i) * t + j];
                            Assert.True(Math.Abs(got - sum) <= 4 * Math.Sqrt(d) * Math.Pow(2, -24) * abs,
                                $"{kernel} batch {bi} [{i},{j}]: {got} vs {sum}");
                        }
            }
        }
        finally
        {
            Gemm.KernelOverride = saved;
        }
    }

    /// <summary>Sizes for the property: 1, primes, small composites and tile-boundary neighbours.</summary>
    public static class ShapeArbitrary
    {
        private static readonly int[] Choices = [1, 2, 3, 4, 5, 6, 7, 8, 11, 13, 15, 16, 17, 23, 31, 32, 33, 47, 64, 65];

        public static Arbitrary<(int M, int N, int K)> Shapes() =>
            (from m in Gen.Elements(Choices)
             from n in Gen.Elements(Choices)
             from k in Gen.Elements(Choices)
             select (m, n, k)).ToArbitrary();
    }

    [Property(Arbitrary = [typeof(ShapeArbitrary)], MaxTest = 60)]
    public bool TensorMatMulMatchesNaiveTripleLoop((int M, int N, int K) shape)
    {
        var (m, n, k) = shape;
        var gen = new Generator((ulong)(m * 10007 + n * 101 + k));
        var a = Tensor.RandN([m, k], gen);
        var b = Tensor.RandN([k, n], gen);
        var c = Tensor.MatMul(a, b).ToArray<double>();
        var av = a.ToArray<double>();
        var bv = b.ToArray<double>();
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0, abs = 0;
                for (int p = 0; p < k; p++)
                {
                    sum += av[i * k + p] * bv[p * n + j];
                    abs += Math.Abs(av[i * k + p] * bv[p * n + j]);
                }
                if (!(Math.Abs(c[i * n + j] - sum) <= 4 * Math.Sqrt(k) * Math.Pow(2, -24) * abs)) return false;
            }
        return true;
    }
}
