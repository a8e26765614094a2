// Int4 kernels (kernels/TinyLlama.Kernels/MatMulQ4.cs) against Ops/Reference/MatMulQuantizedRef.cs (f64): the
// three versions (naive, mat-vec, tiled) at sizes inside one tile and across tile edges (N past 8 rows per
// mat-vec group and past 64 columns, M past 128 rows, K from one block to several), the dequantize kernel,
// the host-side validation, and PTX for sm_80 (the tiled kernel keeps the GEMM's two barriers per step, the
// mat-vec kernel reduces with warp shuffles and no barrier). Runs on ILGPU's CPU accelerator with 32-lane
// warps and 256-thread groups (KernelAcceleratorFixture), and on CUDA when TINYLLAMA_TEST_CUDA=1.
//
// Tolerance: 1e-5 times sum_k |x_k| |w_nk| (see Quantization/MatMulQuantizedTests.cs), far above f32 rounding over K <= 160
// and far below what a wrong nibble, scale, block or row would move.
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Ops.Reference;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Ilgpu;

[Collection(KernelAcceleratorCollection.Name)]
public class MatMulQ4KernelTests(KernelAcceleratorFixture fixture)
{
    public static TheoryData<int, int, int> SmallM() => new()
    {
        { 1, 1, 32 },
        { 1, 67, 96 },     // 9 groups of 8 rows, the last one partial
        { 3, 13, 64 },
        { 5, 9, 160 },     // 5 blocks: the warp's 4-block stride wraps unevenly
    };

    public static TheoryData<int, int, int> AnyM() => new()
    {
        { 1, 1, 32 },
        { 3, 13, 64 },
        { 37, 67, 96 },    // N crosses a 64-column tile
        { 130, 9, 160 },   // M crosses a 128-row tile; 10 K steps
    };

    [Theory]
    [MemberData(nameof(SmallM))]
    public void MatVecMatchesReference(int m, int n, int k) => Check(m, n, k, Q4Version.MatVec);

    [Theory]
    [MemberData(nameof(AnyM))]
    public void TiledMatchesReference(int m, int n, int k) => Check(m, n, k, Q4Version.Tiled);

    [Theory]
    [MemberData(nameof(AnyM))]
    public void NaiveMatchesReference(int m, int n, int k) => Check(m, n, k, Q4Version.Naive);

    private void Check(int m, int n, int k, Q4Version version)
    {
        var rng = new Random(m * 10_000 + n * 100 + k);
        var x = Enumerable.Range(0, m * k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var bytes = Quantize.Q4_0(Tensor.RandN([n, k], new Generator((ulong)(n + k)))).ToArray<byte>();
        var expected = new double[m * n];
        MatMulQuantizedRef.Forward(QuantType.Q4_0, x.Select(v => (double)v).ToArray(), bytes, m, n, k, expected);
        var weights = MatMulQuantizedRef.Dequantize(QuantType.Q4_0, bytes, n, k);
        var words = new ushort[bytes.Length / 2];
        Buffer.BlockCopy(bytes, 0, words, 0, bytes.Length);
        var shape = new Q4Shape { M = m, N = n, K = k };

        foreach (var acc in fixture.Accelerators)
        {
            using var xBuf = acc.Allocate1D(x);
            using var wBuf = acc.Allocate1D(words);
            using var yBuf = acc.Allocate1D(Enumerable.Repeat(7f, m * n).ToArray());   // dirty: every element must be written
            MatMulQ4Kernels.Launch(acc, acc.DefaultStream, new MatMulQ4Args(shape, xBuf.View, wBuf.View, yBuf.View), version);
            acc.Synchronize();
            var got = yBuf.GetAsArray1D();
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double magnitude = 0;
                    for (int e = 0; e < k; e++) magnitude += Math.Abs(x[i * k + e] * weights[j * k + e]);
                    double tol = 1e-5 * Math.Max(magnitude, 1e-3);
                    double err = Math.Abs(got[i * n + j] - expected[i * n + j]);
                    if (err > tol)
                        Assert.Fail($"{acc.AcceleratorType} {version} m={m} n={n} k={k}: y[{i}, {j}] = {got[i * n + j]}, expected {expected[i * n + j]} (tolerance {tol:g3})");
                }
        }
    }

    [Fact]
    public void DequantizeKernelMatchesTheRowReference()
    {
        const int n = 5, k = 96;
        var bytes = Quantize.Q4_0(Tensor.RandN([n, k], new Generator(21))).ToArray<byte>();
        var words = new ushort[bytes.Length / 2];
        Buffer.BlockCopy(bytes, 0, words, 0, bytes.Length);
        var expected = MatMulQuantizedRef.Dequantize(QuantType.Q4_0, bytes, n, k);
        foreach (var acc in fixture.Accelerators)
        {
            using var wBuf = acc.Allocate1D(words);
            using var yBuf = acc.Allocate1D<float>(n * k);
            var kernel = acc.LoadAutoGroupedStreamKernel<Index1D, ArrayView<ushort>, ArrayView<float>, Q4Shape>(MatMulQ4Kernels.DequantizeQ4Kernel<float, F32>);
            kernel(n * k, wBuf.View, yBuf.View, new Q4Shape { N = n, K = k });
            acc.Synchronize();
            Assert.Equal(expected, yBuf.GetAsArray1D());
        }
    }

    [Fact]
    public void ValidationRejectsBadSizesBeforeLaunching()
    {
        var acc = fixture.Accelerators[0];
        using var x = acc.Allocate1D<float>(64);
        using var w = acc.Allocate1D<ushort>(18);
        using var y = acc.Allocate1D<float>(4);
        var ok = new Q4Shape { M = 2, N = 2, K = 32 };
        Assert.Contains("K must be a positive multiple of 32", Assert.Throws<ArgumentOutOfRangeException>(() =>
            MatMulQ4Kernels.Launch(acc, acc.DefaultStream, new MatMulQ4Args(ok with { K = 48 }, x.View, w.View, y.View), Q4Version.Tiled)).Message);
        Assert.Contains("w needs 27 words", Assert.Throws<ArgumentException>(() =>
            MatMulQ4Kernels.Launch(acc, acc.DefaultStream, new MatMulQ4Args(ok with { N = 3 }, x.View, w.View, y.View), Q4Version.MatVec)).Message);
        Assert.Contains("x needs 96 elements", Assert.Throws<ArgumentException>(() =>
            MatMulQ4Kernels.Launch(acc, acc.DefaultStream, new MatMulQ4Args(ok with { M = 3 }, x.View, w.View, y.View), Q4Version.Naive)).Message);
    }

    [Fact]
    public void KernelsCompileToPtxForSm80()
    {
        Action<ArrayView<float>, ArrayView<ushort>, ArrayView<float>, GemmParams> tiled = MatMulQ4Kernels.MatMulQ4ForwardKernel3;
        var ptx = PtxCompiler.Compile(tiled.Method);
        Assert.Contains(".target sm_80", ptx);
        Assert.Equal(2, PtxCompiler.Count(ptx, "bar.sync"));
        Action<ArrayView<float>, ArrayView<ushort>, ArrayView<float>, Q4Shape> matVec = MatMulQ4Kernels.MatMulQ4ForwardKernel2;
        ptx = PtxCompiler.Compile(matVec.Method);
        Assert.Equal(0, PtxCompiler.Count(ptx, "bar.sync"));
        Assert.True(PtxCompiler.Count(ptx, "shfl.sync") > 0, "the mat-vec kernel reduces with warp shuffles");
    }
}
