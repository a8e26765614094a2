// Fused Q8_0, Q4_K and Q6_K kernels (kernels/TinyLlama.Kernels/MatMulBlocks.cs): the three versions (naive,
// mat-vec, tiled) of every format against the f64 reference of dequantize-then-matmul
// (Ops/Reference/MatMulQuantizedRef.cs) and against the CPU backend's MatMulQuantized, at odd M and N (N past
// 8 rows per mat-vec group and past one 64-column tile, M past one 128-row tile), K of one and several blocks
// (K = 256 multiples for the K-quants); the host-side validation; and PTX for sm_80 (mat-vec: shuffles, no
// barrier; tiled: the GEMM's two barriers per step). Runs on ILGPU's CPU accelerator with 32-lane warps and
// 256-thread groups (KernelAcceleratorFixture), and on CUDA when TINYLLAMA_TEST_CUDA=1.
// Q8_0 weights are quantized normals; K-quant weights are random valid blocks (Quantize.RandomBlocks).
//
// Tolerance: 1e-5 times sum_k |x_k| |w_nk| against the f64 reference (as Quantization/MatMulQuantizedTests.cs:
// f32 accumulation over K <= 512 stays far below it, a wrong weight, scale, block or row moves a result by a
// sizeable fraction of it), and 2e-5 of the same against the CPU backend (both sit within 1e-5 of the reference).
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;
using TinyLlama.Ops.Reference;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tests.Quantization;

namespace TinyLlama.Tests.Ilgpu;

[Collection(KernelAcceleratorCollection.Name)]
public class MatMulBlocksKernelTests(KernelAcceleratorFixture fixture)
{
    /// <summary>(type, M, N, blocks per row): a version's sizes; K = blocks x the block size.</summary>
    public static TheoryData<QuantType, int, int, int> SmallM() => Cases((1, 1, 1), (1, 67, 3), (3, 13, 2), (4, 9, 5));

    public static TheoryData<QuantType, int, int, int> AnyM() => Cases((1, 1, 1), (5, 13, 2), (37, 67, 1), (130, 9, 2));

    private static TheoryData<QuantType, int, int, int> Cases(params (int M, int N, int Blocks)[] sizes)
    {
        var data = new TheoryData<QuantType, int, int, int>();
        foreach (var type in new[] { QuantType.Q8_0, QuantType.Q4_K, QuantType.Q6_K })
            foreach (var (m, n, blocks) in sizes)
                data.Add(type, m, n, blocks);
        return data;
    }

    [Theory]
    [MemberData(nameof(SmallM))]
    public void MatVecMatchesReferenceAndCpu(QuantType type, int m, int n, int blocks) => Check(type, m, n, blocks, Q4Version.MatVec);

    [Theory]
    [MemberData(nameof(AnyM))]
    public void TiledMatchesReferenceAndCpu(QuantType type, int m, int n, int blocks) => Check(type, m, n, blocks, Q4Version.Tiled);

    [Theory]
    [MemberData(nameof(AnyM))]
    public void NaiveMatchesReferenceAndCpu(QuantType type, int m, int n, int blocks) => Check(type, m, n, blocks, Q4Version.Naive);

    private void Check(QuantType type, int m, int n, int blocks, Q4Version version)
    {
        int k = blocks * type.Traits().BlockSize;
        var xt = Tensor.RandN([m, k], new Generator((ulong)(m * 10_000 + n * 100 + blocks)));
        var x = xt.ToArray<float>();
        var q = MatMulQuantizedTests.Weights(type, n, k, (ulong)(n + k));
        var bytes = q.ToArray<byte>();
        var expected = new double[m * n];
        MatMulQuantizedRef.Forward(type, x.Select(v => (double)v).ToArray(), bytes, m, n, k, expected);
        var cpu = Tensor.Zeros([m, n]);
        TinyLlama.Tensors.Device.Cpu.Backend.MatMulQuantized(xt, q, cpu);
        var cpuY = cpu.ToArray<float>();
        var weights = MatMulQuantizedRef.Dequantize(type, bytes, n, k);
        var shape = new Q4Shape { M = m, N = n, K = k };

        foreach (var acc in fixture.Accelerators)
        {
            using var xBuf = acc.Allocate1D(x);
            using var wBuf = acc.Allocate1D(bytes);
            using var yBuf = acc.Allocate1D(Enumerable.Repeat(7f, m * n).ToArray());   // dirty: every element must be written
            var args = new MatMulBlocksArgs(shape, xBuf.View, wBuf.View, yBuf.View);
            switch (type)
            {
                case QuantType.Q8_0: MatMulBlocksKernels.Launch<Q8_0Format>(acc, acc.DefaultStream, args, version); break;
                case QuantType.Q4_K: MatMulBlocksKernels.Launch<Q4_KFormat>(acc, acc.DefaultStream, args, version); break;
                default: MatMulBlocksKernels.Launch<Q6_KFormat>(acc, acc.DefaultStream, args, version); break;
            }
            acc.Synchronize();
            var got = yBuf.GetAsArray1D();
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double magnitude = 0;
                    for (int e = 0; e < k; e++) magnitude += Math.Abs(x[i * k + e] * weights[j * k + e]);
                    double tol = 1e-5 * Math.Max(magnitude, 1e-3);
                    int o = i * n + j;
                    string where = $"{acc.AcceleratorType} {type} {version} m={m} n={n} k={k}: y[{i}, {j}] = {got[o]}";
                    if (Math.Abs(got[o] - expected[o]) > tol) Assert.Fail($"{where}, reference {expected[o]} (tolerance {tol:g3})");
                    if (Math.Abs(got[o] - cpuY[o]) > 2 * tol) Assert.Fail($"{where}, CPU backend {cpuY[o]} (tolerance {2 * tol:g3})");
                }
        }
    }

    [Fact]
    public void ValidationRejectsBadSizesBeforeLaunching()
    {
        var acc = fixture.Accelerators[0];
        using var x = acc.Allocate1D<float>(512);
        using var w = acc.Allocate1D<byte>(288);
        using var y = acc.Allocate1D<float>(4);
        var ok = new Q4Shape { M = 2, N = 2, K = 256 };
        Assert.Contains("K must be a positive multiple of 256", Assert.Throws<ArgumentOutOfRangeException>(() =>
            MatMulBlocksKernels.Launch<Q4_KFormat>(acc, acc.DefaultStream, new MatMulBlocksArgs(ok with { K = 96 }, x.View, w.View, y.View), Q4Version.Tiled)).Message);
        Assert.Contains("matmul q6_k: w needs 420 bytes, its view has 288", Assert.Throws<ArgumentException>(() =>
            MatMulBlocksKernels.Launch<Q6_KFormat>(acc, acc.DefaultStream, new MatMulBlocksArgs(ok, x.View, w.View, y.View), Q4Version.MatVec)).Message);
        Assert.Contains("x needs 768 elements", Assert.Throws<ArgumentException>(() =>
            MatMulBlocksKernels.Launch<Q4_KFormat>(acc, acc.DefaultStream, new MatMulBlocksArgs(ok with { M = 3 }, x.View, w.View, y.View), Q4Version.Naive)).Message);
        Assert.Contains("y needs 6 elements", Assert.Throws<ArgumentException>(() =>
            MatMulBlocksKernels.Launch<Q8_0Format>(acc, acc.DefaultStream, new MatMulBlocksArgs(ok with { N = 3, K = 32 }, x.View, w.View, y.View), Q4Version.Naive)).Message);
    }

    [Fact]
    public void KernelsCompileToPtxForSm80()
    {
        foreach (var (matVec, tiled) in new (Action<ArrayView<float>, ArrayView<byte>, ArrayView<float>, Q4Shape>, Action<ArrayView<float>, ArrayView<byte>, ArrayView<float>, GemmParams>)[]
        {
            (MatMulBlocksKernels.MatMulBlocksForwardKernel2<Q8_0Format>, MatMulBlocksKernels.MatMulBlocksForwardKernel3<Q8_0Format>),
            (MatMulBlocksKernels.MatMulBlocksForwardKernel2<Q4_KFormat>, MatMulBlocksKernels.MatMulBlocksForwardKernel3<Q4_KFormat>),
            (MatMulBlocksKernels.MatMulBlocksForwardKernel2<Q6_KFormat>, MatMulBlocksKernels.MatMulBlocksForwardKernel3<Q6_KFormat>),
        })
        {
            var ptx = PtxCompiler.Compile(tiled.Method);
            Assert.Contains(".target sm_80", ptx);
            Assert.Equal(2, PtxCompiler.Count(ptx, "bar.sync"));
            ptx = PtxCompiler.Compile(matVec.Method);
            Assert.Equal(0, PtxCompiler.Count(ptx, "bar.sync"));
            Assert.True(PtxCompiler.Count(ptx, "shfl.sync") > 0, "the mat-vec kernel reduces with warp shuffles");
        }
    }
}
