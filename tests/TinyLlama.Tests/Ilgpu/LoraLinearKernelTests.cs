// Fused LoRA kernels (kernels/TinyLlama.Kernels/LoraLinear.cs) against LoraLinearKernels.Reference, an f64
// loop: both versions (naive, tiled) at sizes that cross no tile, one tile and several (1, primes,
// 64 + 3 columns, 128 + 2 rows, R past 16, K = 0), in the forward layout (b = W^T and v = B^T transposed
// views) and the backward layout (row-major, with a dropout mask on the low-rank term), and the host-side
// validation; the tiled kernel compiles to PTX for sm_80. Runs on ILGPU's CPU accelerator with 32-lane warps
// and 256-thread groups (KernelAcceleratorFixture), and on CUDA when TINYLLAMA_TEST_CUDA=1.
//
// Tolerance: 1e-5 times the same sum over absolute values (|a| |b| + s |u| |v|), which bounds every
// partial sum; f32 accumulation of at most K + R = 57 terms stays far below it, while a wrong index, a
// lost tile or an unmasked term moves a result by O(1) of that scale.
using ILGPU;
using ILGPU.Runtime;
using TinyLlama.Kernels;

namespace TinyLlama.Tests.Ilgpu;

[Collection(KernelAcceleratorCollection.Name)]
public class LoraLinearKernelTests(KernelAcceleratorFixture fixture)
{
    public static TheoryData<int, int, int, int> Sizes() => new()
    {
        { 1, 1, 1, 1 },
        { 13, 7, 5, 3 },
        { 37, 67, 19, 5 },     // primes; N crosses a 64-column tile, K a 16-step
        { 130, 9, 37, 20 },    // M crosses a 128-row tile; R crosses a 16-step
        { 6, 10, 0, 4 },       // K = 0: the low-rank term alone
    };

    [Theory]
    [MemberData(nameof(Sizes))]
    public void TiledMatchesReference(int m, int n, int k, int r)
    {
        Check(m, n, k, r, transposed: true, masked: false, LoraVersion.Tiled);
        Check(m, n, k, r, transposed: false, masked: true, LoraVersion.Tiled);
    }

    [Theory]
    [MemberData(nameof(Sizes))]
    public void NaiveMatchesReference(int m, int n, int k, int r)
    {
        Check(m, n, k, r, transposed: true, masked: false, LoraVersion.Naive);
        Check(m, n, k, r, transposed: false, masked: true, LoraVersion.Naive);
    }

    /// <summary>
    /// c [m, n] = a b + s u v (* mask). transposed: b and v are stored [n, k] and [n, r] and read through
    /// swapped strides (the forward's W^T and B^T); otherwise row-major (the backward's W and A).
    /// </summary>
    private void Check(int m, int n, int k, int r, bool transposed, bool masked, LoraVersion version)
    {
        var rng = new Random(m * 1_000_000 + n * 10_000 + k * 100 + r);
        float[] Rand(int length) => Enumerable.Range(0, length).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var shape = new LoraShape
        {
            M = m, N = n, K = k, R = r,
            ARowStride = k, AColStride = 1,
            BRowStride = transposed ? 1 : n, BColStride = transposed ? k : 1,
            URowStride = r, UColStride = 1,
            VRowStride = transposed ? 1 : n, VColStride = transposed ? r : 1,
            HasMask = masked ? 1 : 0,
        };
        const float scale = 1.5f;
        float[] a = Rand(m * k), b = Rand(k * n), u = Rand(m * r), v = Rand(r * n);
        var mask = Enumerable.Range(0, m * n).Select(_ => rng.NextDouble() < 0.4 ? 0f : 2f).ToArray();
        double[] D(float[] x) => x.Select(f => (double)f).ToArray();
        double[] Abs(float[] x) => x.Select(f => (double)Math.Abs(f)).ToArray();
        var expected = new double[m * n];
        var magnitude = new double[m * n];
        LoraLinearKernels.Reference(shape, scale, D(a), D(b), D(u), D(v), D(mask), expected);
        LoraLinearKernels.Reference(shape, scale, Abs(a), Abs(b), Abs(u), Abs(v), D(mask), magnitude);

        foreach (var acc in fixture.Accelerators)
        {
            using var aBuf = acc.Allocate1D(a.Length > 0 ? a : [0f]);
            using var bBuf = acc.Allocate1D(b.Length > 0 ? b : [0f]);
            using var uBuf = acc.Allocate1D(u);
            using var vBuf = acc.Allocate1D(v);
            using var maskBuf = acc.Allocate1D(mask);
            using var cBuf = acc.Allocate1D(Enumerable.Repeat(7f, m * n).ToArray());   // dirty: every element must be written
            var args = new LoraLinearArgs(shape, scale, aBuf.View, bBuf.View, uBuf.View, vBuf.View, maskBuf.View, cBuf.View);
            LoraLinearKernels.Launch(acc, acc.DefaultStream, args, version);
            acc.Synchronize();
            var got = cBuf.GetAsArray1D();
            for (int i = 0; i < expected.Length; i++)
            {
                double tol = 1e-5 * Math.Max(magnitude[i], 1e-3);
                if (Math.Abs(got[i] - expected[i]) > tol)
                    Assert.Fail($"{acc.AcceleratorType} {version} m={m} n={n} k={k} r={r} transposed={transposed} mask={masked}: " +
                                $"c[{i}] = {got[i]}, expected {expected[i]} (tolerance {tol:g3})");
            }
        }
    }

    [Fact]
    public void ValidationRejectsOperandsOutsideTheirViewsBeforeLaunching()
    {
        var acc = fixture.Accelerators[0];
        using var ok = acc.Allocate1D<float>(64);
        using var small = acc.Allocate1D<float>(15);
        var shape = new LoraShape { M = 4, N = 4, K = 4, R = 2, ARowStride = 4, AColStride = 1, BRowStride = 4, BColStride = 1, URowStride = 2, UColStride = 1, VRowStride = 4, VColStride = 1 };
        var e = Assert.Throws<ArgumentOutOfRangeException>(() =>
            LoraLinearKernels.Launch(acc, acc.DefaultStream, new LoraLinearArgs(shape, 1f, small.View, ok.View, ok.View, ok.View, ok.View, ok.View), LoraVersion.Tiled));
        Assert.Contains("a (4 x 4", e.Message);
        var masked = shape with { HasMask = 1 };
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            LoraLinearKernels.Launch(acc, acc.DefaultStream, new LoraLinearArgs(masked, 1f, ok.View, ok.View, ok.View, ok.View, small.View, ok.View), LoraVersion.Naive));
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            LoraLinearKernels.Launch(acc, acc.DefaultStream, new LoraLinearArgs(shape with { R = -1 }, 1f, ok.View, ok.View, ok.View, ok.View, ok.View, ok.View), LoraVersion.Naive));
    }

    [Fact]
    public void TiledKernelCompilesToPtxForSm80()
    {
        Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, float, ArrayView<float>, LoraShape> tiled =
            LoraLinearKernels.LoraLinearForwardKernel2;
        var ptx = PtxCompiler.Compile(tiled.Method);
        Assert.Contains(".target sm_80", ptx);
        Assert.Equal(2, PtxCompiler.Count(ptx, "bar.sync"));   // two barriers per tile, as the GEMM
    }
}
