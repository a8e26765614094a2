// The int4 product with Q4_0 weights (IBackend.MatMulQ4, Functional.LinearQ4) against its naive
// definition (Ops/Reference/MatMulQ4Ref.cs) on the CPU backend (small-M path in registers, large-M path
// through expanded panels, also forced to cross several panels, and f64) and on the ILGPU backend's CPU accelerator;
// the AVX2 block dot against its scalar twin at every block count 1..9; DequantizeQ4 on both backends;
// the gradient of x through LinearQ4 against central finite differences in f64; and the shape errors.
//
// Tolerance (f32): 1e-5 times sum_k |x_k| |w_nk| per output, which bounds every partial sum of the
// product: f32 accumulation of K <= 288 terms stays far below it, while one wrong nibble moves a result by
// |d x| (about 0.25 for unit normals), over 100 times the tolerance at these K, and a wrong block, scale,
// row or panel by more. f64: 1e-12
// of the same scale. The ILGPU backend here is ILGPU's CPU accelerator with 4-lane warps, so it runs the
// naive kernel; the mat-vec and tiled kernels are tested directly in Ilgpu/MatMulQ4KernelTests.cs and
// through the backend on the GPU-shaped ilgpu-cpu:1 in Ilgpu/BackendCheckTests.cs (`tinyllama check`).
using TinyLlama.Backends.Cpu;
using TinyLlama.Ops.Reference;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tests.Ilgpu;
using static TinyLlama.Tests.Infrastructure.GradCheck;

namespace TinyLlama.Tests.Ops;

public class MatMulQ4Tests
{
    public static TheoryData<int, int, int> Sizes() => new()
    {
        { 1, 1, 32 },
        { 1, 67, 96 },      // mat-vec, N odd
        { 3, 13, 64 },
        { 4, 7, 288 },      // the largest M of the small-M path
        { 37, 70, 160 },
        { 130, 9, 64 },
    };

    [Theory]
    [MemberData(nameof(Sizes))]
    public void CpuMatchesReference(int m, int n, int k)
    {
        Check(m, n, k, DType.F32, Device.Cpu);
        Check(m, n, k, DType.F64, Device.Cpu);
    }

    [Theory]
    [InlineData(1, 67, 96)]
    [InlineData(5, 9, 64)]
    public void IlgpuMatchesReference(int m, int n, int k)
    {
        Check(m, n, k, DType.F32, IlgpuTestUtil.Dev);
        Check(m, n, k, DType.F64, IlgpuTestUtil.Dev);
    }

    private static void Check(int m, int n, int k, DType dtype, Device device)
    {
        var x = Tensor.RandN([m, k], new Generator((ulong)(m * 7 + n)), DType.F64);
        var w = Tensor.RandN([n, k], new Generator((ulong)(k + 3)));
        var q = Quantize.Q4_0(w);
        var bytes = q.ToArray<byte>();
        var xs = x.ToArray<double>();
        var expected = new double[m * n];
        MatMulQ4Ref.Forward(xs, bytes, m, n, k, expected);
        var magnitude = Magnitude(xs, bytes, m, n, k);

        var y = Tensor.Zeros([m, n], dtype, device);
        y.Backend.MatMulQ4(x.To(dtype).To(device), q.To(device), y);
        var got = y.To(Device.Cpu).ToArray<double>();
        double rel = dtype == DType.F64 ? 1e-12 : 1e-5;
        for (int i = 0; i < got.Length; i++)
        {
            double tol = rel * Math.Max(magnitude[i], 1e-3);
            Assert.True(Math.Abs(got[i] - expected[i]) <= tol,
                $"{device} {dtype.Name()} m={m} n={n} k={k}: y[{i}] = {got[i]}, expected {expected[i]} (tolerance {tol:g3})");
        }
    }

    /// <summary>sum_k |x_mk| |w_nk| for every output: the scale of its rounding error.</summary>
    private static double[] Magnitude(double[] x, byte[] w, int m, int n, int k)
    {
        var weights = MatMulQ4Ref.Dequantize(w, n, k);
        var abs = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                for (int e = 0; e < k; e++) abs[i * n + j] += Math.Abs(x[i * k + e]) * Math.Abs(weights[j * k + e]);
        return abs;
    }

    [Fact]
    public unsafe void LargeMPathCrossesPanels()
    {
        // Panels of 16 rows (16 x 96 values) over N = 37: three panels of 16, 16 and 5 rows.
        const int m = 6, n = 37, k = 96;
        var x = Tensor.RandN([m, k], new Generator(51));
        var q = Quantize.Q4_0(Tensor.RandN([n, k], new Generator(52)));
        var bytes = q.ToArray<byte>();
        var xs = x.ToArray<double>();
        var expected = new double[m * n];
        MatMulQ4Ref.Forward(xs, bytes, m, n, k, expected);
        var magnitude = Magnitude(xs, bytes, m, n, k);
        var y = Tensor.Full([m, n], 7.0);                       // dirty: every element must be written
        fixed (byte* w = bytes) CpuBackend.MatMulQ4Panels(x, w, y, m, n, k, panelValues: 16 * k);
        var got = y.ToArray<double>();
        for (int i = 0; i < got.Length; i++)
            Assert.True(Math.Abs(got[i] - expected[i]) <= 1e-5 * magnitude[i], $"y[{i / n}, {i % n}] = {got[i]}, expected {expected[i]}");
    }

    [SkippableFact]
    public unsafe void Avx2BlockDotMatchesScalarAtEveryBlockCount()
    {
        Skip.IfNot(System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported,
            "this CPU has no AVX2 + FMA; the scalar path is what runs (and is tested through CpuMatchesReference)");
        for (int blocks = 1; blocks <= 9; blocks++)
        {
            var w = Quantize.Q4_0(Tensor.RandN([1, 32 * blocks], new Generator((ulong)blocks))).ToArray<byte>();
            var x = Tensor.RandN([32 * blocks], new Generator((ulong)(100 + blocks))).ToArray<float>();
            fixed (byte* wp = w)
            fixed (float* xp = x)
            {
                float scalar = CpuBackend.DotQ4_0Scalar(wp, xp, blocks);
                float simd = CpuBackend.DotQ4_0Avx2(wp, xp, blocks);
                double scale = 0;
                var values = MatMulQ4Ref.Dequantize(w, 1, 32 * blocks);
                for (int i = 0; i < x.Length; i++) scale += Math.Abs(values[i] * x[i]);
                Assert.True(Math.Abs(scalar - simd) <= 1e-5 * scale, $"{blocks} blocks: scalar {scalar}, avx2 {simd}");
            }
        }
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("ilgpu-cpu")]
    public void DequantizeMatchesTheRowReference(string device)
    {
        var dev = device == "cpu" ? Device.Cpu : IlgpuTestUtil.Dev;
        var q = Quantize.Q4_0(Tensor.RandN([7, 96], new Generator(9)));
        var expected = MatMulQ4Ref.Dequantize(q.ToArray<byte>(), 7, 96);
        var qd = q.To(dev);
        Assert.Equal(expected, Quantize.DequantizeQ4_0(qd).To(Device.Cpu).ToArray<float>());
        Assert.Equal(expected.Select(v => (double)v).ToArray(), Quantize.DequantizeQ4_0(qd, DType.F64).To(Device.Cpu).ToArray<double>());
    }

    [Fact]
    public void LinearQ4GradientOfXMatchesFiniteDifferences()
    {
        var q = Quantize.Q4_0(Tensor.RandN([5, 64], new Generator(11)));
        TinyLlama.Tests.Infrastructure.GradCheck.Check(t => Functional.LinearQ4(t[0], q), [RandN(12, 2, 3, 64)]);
    }

    [Fact]
    public void LinearQ4ForwardEqualsMatMulWithTheExpandedWeights()
    {
        var q = Quantize.Q4_0(Tensor.RandN([6, 96], new Generator(13)));
        var x = RandN(14, 2, 4, 96);
        var y = Functional.LinearQ4(x, q);
        Assert.Equal([2, 4, 6], y.Shape);
        var expected = Tensor.MatMul(x, Quantize.DequantizeQ4_0(q, DType.F64).MT);
        FusedAssert.Close(expected.ToArray<double>(), y.ToArray<double>(), 1e-12, 1e-12, "y");
    }

    [Fact]
    public void ShapeErrorsNameTheOpAndTheShapes()
    {
        var q = Quantize.Q4_0(Tensor.RandN([4, 64], new Generator(15)));
        var e = Assert.Throws<ArgumentException>(() => Functional.LinearQ4(Tensor.Zeros([3, 32]), q));
        Assert.Contains("linear_q4: x [3, 32] does not end in the weights' 64 input features", e.Message);
        e = Assert.Throws<ArgumentException>(() => Functional.LinearQ4(Tensor.Zeros([3, 64], DType.F16), q));
        Assert.Contains("f32 or f64", e.Message);
        e = Assert.Throws<ArgumentException>(() => Device.Cpu.Backend.MatMulQ4(Tensor.Zeros([3, 64]), q, Tensor.Zeros([3, 5])));
        Assert.Contains("-> y [M, 4] expected", e.Message);
        e = Assert.Throws<ArgumentException>(() => Functional.LinearQ4(Tensor.Zeros([3, 64]), Tensor.Zeros([4, 64])));
        Assert.Contains("weights must be contiguous q4 blocks", e.Message);
        e = Assert.Throws<ArgumentException>(() => Functional.LinearQ4(Tensor.Zeros([3, 64]), q.To(IlgpuTestUtil.Dev)));
        Assert.Contains("weights are on", e.Message);
    }
}
