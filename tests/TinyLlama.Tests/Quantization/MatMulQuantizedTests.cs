// The product with block-quantized weights (IBackend.MatMulQuantized, Functional.LinearQuantized) for every
// block type (Q4_0, Q8_0, Q4_K, Q6_K) against its naive definition (Ops/Reference/MatMulQuantizedRef.cs:
// reference dequantize + f64 product) on the CPU backend (small-M path, large-M path through expanded
// panels, also forced to cross several panels, and f64) and on the ILGPU backend's CPU accelerator; the
// AVX2 block dots of Q4_0 and Q8_0 against their scalar twins at every block count 1..9; the AVX2 row
// expansion of every type against the reference converter (bit for bit); DequantizeBlocks on both backends
// (bit for bit); the gradient of x through LinearQuantized against central finite differences in f64;
// Embedding over block tables against the dequantized table; and the one-line shape errors.
// Q4_0 and Q8_0 weights are quantized normals; Q4_K and Q6_K weights are random valid blocks
// (Quantize.RandomBlocks: every bit pattern of the quants and six-bit/int8 scales, incl. negative Q6_K scales).
//
// Tolerance (f32): 1e-5 times sum_k |x_k| |w_nk| per output, which bounds every partial sum of the
// product: f32 accumulation of K <= 768 terms stays far below it, while one wrong nibble moves a result by
// |d x| (a sizeable fraction of the scale at these K), a wrong block, scale, row or panel by more. f64: 1e-12
// of the same scale. The ILGPU backend here is ILGPU's CPU accelerator with 4-lane warps, so every type runs
// its one-thread-per-output kernel (the mat-vec and tiled ones are tested in Ilgpu/MatMulQ4KernelTests.cs and
// Ilgpu/MatMulBlocksKernelTests.cs); the GPU-shaped ilgpu-cpu:1 runs them all through BackendCheck
// (Ilgpu/BackendCheckTests.cs, `tinyllama check`).
using TinyLlama.Backends.Cpu;
using TinyLlama.Ops.Reference;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tests.Ilgpu;
using TinyLlama.Tests.Ops;
using static TinyLlama.Tests.Infrastructure.GradCheck;

namespace TinyLlama.Tests.Quantization;

public class MatMulQuantizedTests
{
    public static readonly QuantType[] Types = [QuantType.Q4_0, QuantType.Q8_0, QuantType.Q4_K, QuantType.Q6_K];

    /// <summary>(type, M, N, K): every type on the small-M path (M &lt;= 4) and the panel path, odd N, several K.</summary>
    public static TheoryData<QuantType, int, int, int> Sizes()
    {
        var data = new TheoryData<QuantType, int, int, int>();
        foreach (var type in Types)
        {
            int b = type.Traits().BlockSize;
            data.Add(type, 1, 1, b);
            data.Add(type, 1, 67, 3 * b);     // mat-vec, N odd
            data.Add(type, 3, 13, 2 * b);
            data.Add(type, 4, 7, b);          // the largest M of the small-M path
            data.Add(type, 37, 31, 3 * b);
            data.Add(type, 130, 9, 2 * b);
        }
        return data;
    }

    public static TheoryData<QuantType> AllTypes()
    {
        var data = new TheoryData<QuantType>();
        foreach (var type in Types) data.Add(type);
        return data;
    }

    /// <summary>Weights [n, k] of <paramref name="type"/>: quantized normals where the type can be written, else random valid blocks.</summary>
    internal static Tensor Weights(QuantType type, int n, int k, ulong seed) => type.Traits().CanQuantize
        ? Quantize.ToBlocks(Tensor.RandN([n, k], new Generator(seed)), type)
        : Quantize.RandomBlocks(type, n, k, new Generator(seed));

    [Theory]
    [MemberData(nameof(Sizes))]
    public void CpuMatchesReference(QuantType type, int m, int n, int k)
    {
        Check(type, m, n, k, DType.F32, Device.Cpu);
        Check(type, m, n, k, DType.F64, Device.Cpu);
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public void IlgpuMatchesReference(QuantType type)
    {
        int b = type.Traits().BlockSize;
        foreach (var (m, n, k) in new[] { (1, 67, 3 * b), (5, 9, 2 * b) })
        {
            Check(type, m, n, k, DType.F32, IlgpuTestUtil.Dev);
            Check(type, m, n, k, DType.F64, IlgpuTestUtil.Dev);
        }
    }

    private static void Check(QuantType type, int m, int n, int k, DType dtype, Device device)
    {
        var x = Tensor.RandN([m, k], new Generator((ulong)(m * 7 + n)), DType.F64);
        var q = Weights(type, n, k, (ulong)(k + 3));
        Assert.Equal(type.ToDType(), q.DType);
        var bytes = q.ToArray<byte>();
        var xs = x.ToArray<double>();
        var expected = new double[m * n];
        MatMulQuantizedRef.Forward(type, xs, bytes, m, n, k, expected);
        var magnitude = Magnitude(type, xs, bytes, m, n, k);

        var y = Tensor.Full([m, n], 7.0, dtype, device);           // dirty: every element must be written
        y.Backend.MatMulQuantized(x.To(dtype).To(device), q.To(device), y);
        AssertClose(expected, y.To(Device.Cpu).ToArray<double>(), magnitude, dtype == DType.F64 ? 1e-12 : 1e-5, $"{type} {device} {dtype.Name()} m={m} n={n} k={k}");
    }

    private static void AssertClose(double[] expected, double[] got, double[] magnitude, double rel, string what)
    {
        for (int i = 0; i < got.Length; i++)
        {
            double tol = rel * Math.Max(magnitude[i], 1e-3);
            Assert.True(Math.Abs(got[i] - expected[i]) <= tol, $"{what}: y[{i}] = {got[i]}, expected {expected[i]} (tolerance {tol:g3})");
        }
    }

    /// <summary>sum_k |x_mk| |w_nk| for every output: the scale of its rounding error.</summary>
    private static double[] Magnitude(QuantType type, double[] x, byte[] w, int m, int n, int k)
    {
        var weights = MatMulQuantizedRef.Dequantize(type, w, n, k);
        var abs = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                for (int e = 0; e < k; e++) abs[i * n + j] += Math.Abs(x[i * k + e]) * Math.Abs(weights[j * k + e]);
        return abs;
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public unsafe void LargeMPathCrossesPanels(QuantType type)
    {
        // Panels of 16 rows over N = 37: three panels of 16, 16 and 5 rows.
        int m = 6, n = 37, k = 2 * type.Traits().BlockSize;
        var x = Tensor.RandN([m, k], new Generator(51));
        var bytes = Weights(type, n, k, 52).ToArray<byte>();
        var xs = x.ToArray<double>();
        var expected = new double[m * n];
        MatMulQuantizedRef.Forward(type, xs, bytes, m, n, k, expected);
        var y = Tensor.Full([m, n], 7.0);
        fixed (byte* w = bytes) CpuBackend.MatMulPanels(type, x, w, y, m, n, k, panelValues: 16 * k);
        AssertClose(expected, y.ToArray<double>(), Magnitude(type, xs, bytes, m, n, k), 1e-5, $"{type} panels");
    }

    [SkippableFact]
    public unsafe void Avx2BlockDotsMatchScalarAtEveryBlockCount()
    {
        Skip.IfNot(System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported,
            "this CPU has no AVX2 + FMA; the scalar path is what runs (and is tested through CpuMatchesReference)");
        foreach (var type in new[] { QuantType.Q4_0, QuantType.Q8_0 })
            for (int blocks = 1; blocks <= 9; blocks++)
            {
                var w = Weights(type, 1, 32 * blocks, (ulong)blocks).ToArray<byte>();
                var x = Tensor.RandN([32 * blocks], new Generator((ulong)(100 + blocks))).ToArray<float>();
                fixed (byte* wp = w)
                fixed (float* xp = x)
                {
                    float scalar = type == QuantType.Q4_0 ? CpuBackend.DotQ4_0Scalar(wp, xp, blocks) : CpuBackend.DotQ8_0Scalar(wp, xp, blocks);
                    float simd = type == QuantType.Q4_0 ? CpuBackend.DotQ4_0Avx2(wp, xp, blocks) : CpuBackend.DotQ8_0Avx2(wp, xp, blocks);
                    double exact = 0, scale = 0;
                    var values = MatMulQuantizedRef.Dequantize(type, w, 1, 32 * blocks);
                    for (int i = 0; i < x.Length; i++) { exact += (double)values[i] * x[i]; scale += Math.Abs(values[i] * x[i]); }
                    Assert.True(Math.Abs(scalar - simd) <= 1e-5 * scale, $"{type}, {blocks} blocks: scalar {scalar}, avx2 {simd}");
                    Assert.True(Math.Abs(scalar - exact) <= 1e-5 * scale, $"{type}, {blocks} blocks: scalar {scalar}, exact {exact}");
                }
            }
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public unsafe void RowExpansionEqualsTheReferenceBitForBit(QuantType type)
    {
        // ExpandRow takes the AVX2 path where the CPU has it; the reference converter is the definition.
        int k = 3 * type.Traits().BlockSize;
        var w = Weights(type, 5, k, 61).ToArray<byte>();
        var expected = MatMulQuantizedRef.Dequantize(type, w, 5, k);
        var got = new float[5 * k];
        int rowBytes = type.Traits().RowBytes(k);
        fixed (byte* wp = w)
        fixed (float* yp = got)
            for (int j = 0; j < 5; j++) CpuBackend.ExpandRow(type, wp + j * rowBytes, yp + j * k, k);
        Assert.Equal(expected, got);
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public void DequantizeMatchesTheRowReferenceOnBothBackends(QuantType type)
    {
        int k = 2 * type.Traits().BlockSize;
        var q = Weights(type, 7, k, 9);
        var expected = MatMulQuantizedRef.Dequantize(type, q.ToArray<byte>(), 7, k);
        foreach (var dev in new[] { Device.Cpu, IlgpuTestUtil.Dev })
        {
            var qd = q.To(dev);
            Assert.Equal(expected, Quantize.Dequantize(qd).To(Device.Cpu).ToArray<float>());
            Assert.Equal(expected.Select(v => (double)v).ToArray(), Quantize.Dequantize(qd, DType.F64).To(Device.Cpu).ToArray<double>());
        }
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public void LinearQuantizedGradientOfXMatchesFiniteDifferences(QuantType type)
    {
        var q = Weights(type, 5, type.Traits().BlockSize, 11);
        TinyLlama.Tests.Infrastructure.GradCheck.Check(t => Functional.LinearQuantized(t[0], q), [RandN(12, 2, 1, type.Traits().BlockSize)]);
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public void LinearQuantizedForwardEqualsMatMulWithTheExpandedWeights(QuantType type)
    {
        int k = 2 * type.Traits().BlockSize;
        var q = Weights(type, 6, k, 13);
        var x = RandN(14, 2, 4, k);
        var y = Functional.LinearQuantized(x, q);
        Assert.Equal([2, 4, 6], y.Shape);
        var expected = Tensor.MatMul(x, Quantize.Dequantize(q, DType.F64).MT);
        FusedAssert.Close(expected.ToArray<double>(), y.ToArray<double>(), 1e-12, 1e-12, "y");
        Assert.Equal(y.ToArray<double>(), Functional.LinearQ4(x, q).ToArray<double>());   // the alias
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public void EmbeddingOverABlockTableEqualsTheDequantizedTable(QuantType type)
    {
        int v = 11, c = 2 * type.Traits().BlockSize;
        var table = Weights(type, v, c, 17);
        var dense = Quantize.Dequantize(table).ToArray<float>();
        var ids = Tensor.FromArray(new[] { 3, 0, 10, 3, 7, 1 }, [2, 3]);
        foreach (var dev in new[] { Device.Cpu, IlgpuTestUtil.Dev })
        {
            var y = Functional.Embedding(ids.To(dev), table.To(dev));
            Assert.Equal([2, 3, c], y.Shape);
            Assert.Equal(DType.F32, y.DType);
            var got = y.To(Device.Cpu).ToArray<float>();
            var flat = ids.ToArray<int>();
            for (int i = 0; i < flat.Length; i++)
                Assert.Equal(dense.AsSpan(flat[i] * c, c).ToArray(), got.AsSpan(i * c, c).ToArray());
        }
        var e = Assert.Throws<ArgumentException>(() => Functional.Embedding(Tensor.FromArray(new[] { 11 }), table));
        Assert.Contains("embedding: id 11 at position 0 is out of range for a table of 11 rows", e.Message);
    }

    [Fact]
    public void ShapeErrorsNameTheOpAndTheShapes()
    {
        var q = Quantize.Q4_0(Tensor.RandN([4, 64], new Generator(15)));
        var e = Assert.Throws<ArgumentException>(() => Functional.LinearQuantized(Tensor.Zeros([3, 32]), q));
        Assert.Contains("linear_quantized: x [3, 32] does not end in the weights' 64 input features", e.Message);
        e = Assert.Throws<ArgumentException>(() => Functional.LinearQuantized(Tensor.Zeros([3, 64], DType.F16), q));
        Assert.Contains("f32 or f64", e.Message);
        e = Assert.Throws<ArgumentException>(() => Device.Cpu.Backend.MatMulQuantized(Tensor.Zeros([3, 64]), q, Tensor.Zeros([3, 5])));
        Assert.Contains("matmul_quantized: x [M, 64] @ q4_0 w [4, 64]^T -> y [M, 4] expected", e.Message);
        e = Assert.Throws<ArgumentException>(() => Functional.LinearQuantized(Tensor.Zeros([3, 64]), Tensor.Zeros([4, 64])));
        Assert.Contains("linear_quantized: weights must be contiguous blocks [N, row bytes] of q4_0, q8_0, q4_K or q6_K, got float32 [4, 64]", e.Message);
        e = Assert.Throws<ArgumentException>(() => Functional.LinearQuantized(Tensor.Zeros([3, 64]), q.To(IlgpuTestUtil.Dev)));
        Assert.Contains("weights are on", e.Message);
        e = Assert.Throws<ArgumentException>(() => Functional.LinearQuantized(Tensor.Zeros([3, 256]), Tensor.Zeros([4, 143], DType.Q4_K)));
        Assert.Contains("linear_quantized: a row of 143 bytes is not a whole number of 144-byte q4_K blocks", e.Message);
        e = Assert.Throws<ArgumentException>(() => Quantize.Dequantize(Tensor.Zeros([2, 209], DType.Q6_K)));
        Assert.Contains("dequantize: a row of 209 bytes is not a whole number of 210-byte q6_K blocks", e.Message);
        var k = Quantize.RandomBlocks(QuantType.Q6_K, 3, 256, new Generator(1));
        e = Assert.Throws<ArgumentException>(() => Device.Cpu.Backend.DequantizeBlocks(k, Tensor.Zeros([3, 255])));
        Assert.Contains("dequantize_blocks: expected a contiguous f32 or f64 y [3, 256] for q6_K w [3, 210], got float32 [3, 255]", e.Message);
        e = Assert.Throws<ArgumentException>(() => IlgpuTestUtil.Backend.MatMulQuantized(Tensor.Zeros([2, 256]).To(IlgpuTestUtil.Dev), k.To(IlgpuTestUtil.Dev), Tensor.Zeros([2, 3], DType.F64).To(IlgpuTestUtil.Dev)));
        Assert.Contains("matmul_quantized: x and y must be both f32 or both f64, got float32 and float64", e.Message);
        e = Assert.Throws<ArgumentException>(() => Functional.Embedding(Tensor.FromArray(new[] { 0 }), Tensor.Zeros([2, 35], DType.Q8_0)));
        Assert.Contains("embedding: a row of 35 bytes is not a whole number of 34-byte q8_0 blocks", e.Message);
    }
}
