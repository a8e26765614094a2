// GEMM kernels (kernels/TinyLlama.Kernels/Gemm*.cs) against GemmKernels.Reference, an f64 triple loop:
// every version (naive, tiled, tensor-core) at odd sizes that cross no tile, one tile and several tiles
// (1, primes, 64 +- 1, 128 + 1), row-major, transposed and strided (gapped, offset) operands, two batch
// dims with a broadcast (stride 0) operand, accumulate, f16 and bf16 inputs with f32, f16 and bf16
// outputs, and the host-side validation; and every version compiles to PTX for sm_80 with ILGPU's PTX
// backend, which needs no GPU (KernelsCompileToPtxForSm80). Runs on ILGPU's CPU accelerator with 32-lane warps (the
// tensor-core kernel's mma is then emulated through shared memory; its data movement is what is tested),
// and also on CUDA when TINYLLAMA_TEST_CUDA=1 and a CUDA device exists (benchmarks/gpu/run.sh sets it).
//
// Tolerances. 16-bit inputs are rounded on the host first and the reference multiplies the rounded
// values, so every product is exact in f32 (11 x 11 or 8 x 8 significant bits) and the only input-side
// error is f32 accumulation: at most about K * 2^-24 * sum_k |a_ik b_kj|, below 1e-5 of that sum for the
// K <= 200 used here. A 16-bit output adds its own rounding: half an ulp, 2^-11 (f16) or 2^-8 (bf16)
// relative, so those get 2^-10 / 2^-7 (one ulp) times |c| on top. A wrong index, a lost tile or a
// dropped K step moves results by O(1) and fails.
using System.Reflection;
using ILGPU;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using TinyLlama.Kernels;

namespace TinyLlama.Tests.Ilgpu;

/// <summary>
/// ILGPU accelerators for the kernel tests: the CPU accelerator with 32-lane warps and room for 256-thread
/// groups (always), plus CUDA when TINYLLAMA_TEST_CUDA=1 and a device is present.
/// </summary>
public sealed class KernelAcceleratorFixture : IDisposable
{
    private readonly Context context;

    public KernelAcceleratorFixture()
    {
        bool cuda = Environment.GetEnvironmentVariable("TINYLLAMA_TEST_CUDA") == "1";
        // 32 threads per warp (the kernels' warp shuffles assume it), 8 warps per multiprocessor (groups of
        // up to 256 threads), 1 multiprocessor: each simulated thread is an OS thread.
        context = Context.Create(builder =>
        {
            builder.CPU(new CPUDevice(32, 8, 1));
            if (cuda) builder.Cuda();
        });
        var list = new List<Accelerator> { context.GetCPUDevice(0).CreateAccelerator(context) };
        if (cuda)
            foreach (var device in context.GetCudaDevices())
                list.Add(device.CreateAccelerator(context));
        Accelerators = list;
    }

    /// <summary>The CPU accelerator first, then any CUDA accelerators.</summary>
    public IReadOnlyList<Accelerator> Accelerators { get; }

    public void Dispose()
    {
        foreach (var accelerator in Accelerators) accelerator.Dispose();
        context.Dispose();
    }
}

/// <summary>
/// Compiles a kernel (explicitly grouped, or implicitly when its first parameter is Index1D) to PTX for sm_80 with ILGPU's own PTX backend, which needs no GPU: it catches what the
/// CPU accelerator cannot (it runs the kernels' IL directly), e.g. a math function without a PTX lowering
/// or an inline-PTX call ILGPU rejects. The PTX is not assembled (no ptxas here).
/// </summary>
internal static class PtxCompiler
{
    public static string Compile(MethodInfo kernel)
    {
        using var context = Context.Create(builder => builder.Optimize(OptimizationLevel.O2));
        using var backend = new PTXBackend(context, new CudaCapabilityContext(CudaArchitecture.SM_80), CudaArchitecture.SM_80,
                                           CudaInstructionSet.ISA_80, null!);
        var entry = kernel.GetParameters()[0].ParameterType == typeof(Index1D)
            ? EntryPointDescription.FromImplicitlyGroupedKernel(kernel)
            : EntryPointDescription.FromExplicitlyGroupedKernel(kernel);
        var specialization = KernelSpecialization.Empty;
        return ((PTXCompiledKernel)backend.Compile(entry, specialization)).PTXAssembly;
    }

    public static int Count(string ptx, string what)
    {
        int n = 0;
        for (int i = ptx.IndexOf(what, StringComparison.Ordinal); i >= 0; i = ptx.IndexOf(what, i + what.Length, StringComparison.Ordinal)) n++;
        return n;
    }
}

[CollectionDefinition(Name)]
public sealed class KernelAcceleratorCollection : ICollectionFixture<KernelAcceleratorFixture>
{
    public const string Name = "ILGPU kernels";
}

[Collection(KernelAcceleratorCollection.Name)]
public class GemmKernelTests(KernelAcceleratorFixture fixture)
{
    /// <summary>How an operand of (rows, cols) per batch lies in memory.</summary>
    public enum Order
    {
        /// <summary>Dense row-major, batches one after another.</summary>
        RowMajor,
        /// <summary>Dense column-major (a transposed view of a row-major buffer).</summary>
        Transposed,
        /// <summary>Row-major with gaps: offset 3, column stride 2, row stride 2 cols + 1.</summary>
        Strided,
        /// <summary>Row-major, shared by every batch (batch strides 0).</summary>
        Broadcast,
    }

    private static GemmLayout MakeLayout(Order order, int rows, int cols, int batch0, int batch1, out long length)
    {
        GemmLayout l;
        long perBatch;
        switch (order)
        {
            case Order.Transposed:
                perBatch = (long)rows * cols;
                l = new GemmLayout(0, 1, rows, perBatch * batch1, perBatch);
                break;
            case Order.Strided:
                long rowStride = 2L * cols + 1;
                perBatch = rows * rowStride + 5;
                l = new GemmLayout(3, rowStride, 2, perBatch * batch1, perBatch);
                break;
            case Order.Broadcast:
                perBatch = (long)rows * cols;
                length = Math.Max(1, perBatch);
                return new GemmLayout(0, cols, 1, 0, 0);
            default:
                perBatch = (long)rows * cols;
                l = new GemmLayout(0, cols, 1, perBatch * batch1, perBatch);
                break;
        }
        length = Math.Max(1, l.Offset + perBatch * batch0 * batch1 + 7);
        return l;
    }

    /// <summary>Random values exactly representable in <paramref name="type"/>, as f64 and as the raw data.</summary>
    private static double[] RandomValues(Random rng, long length, GemmElementType type, out float[] f32, out ushort[] bits)
    {
        var values = new double[length];
        f32 = type == GemmElementType.F32 ? new float[length] : [];
        bits = type == GemmElementType.F32 ? [] : new ushort[length];
        for (long i = 0; i < length; i++)
        {
            float x = (float)(rng.NextDouble() * 2 - 1);
            if (type == GemmElementType.F32)
            {
                f32[i] = x;
                values[i] = x;
            }
            else
            {
                bits[i] = ElementConvert.ToBits(x, type);
                values[i] = ElementConvert.FromBits(bits[i], type);
            }
        }
        return values;
    }

    /// <summary>Runs one GEMM on every accelerator of the fixture and checks it against the f64 reference.</summary>
    private void Check(int m, int n, int k, GemmVersion version, Order aOrder = Order.RowMajor, Order bOrder = Order.RowMajor,
                       int batch0 = 1, int batch1 = 1, bool accumulate = false,
                       GemmElementType aType = GemmElementType.F32, GemmElementType bType = GemmElementType.F32,
                       GemmElementType cType = GemmElementType.F32, int seed = 1)
    {
        var rng = new Random(seed);
        var la = MakeLayout(aOrder, m, k, batch0, batch1, out long aLength);
        var lb = MakeLayout(bOrder, k, n, batch0, batch1, out long bLength);
        var lc = MakeLayout(Order.RowMajor, m, n, batch0, batch1, out long cLength);
        double[] a = RandomValues(rng, aLength, aType, out var aF32, out var aBits);
        double[] b = RandomValues(rng, bLength, bType, out var bF32, out var bBits);
        double[] c0 = RandomValues(rng, cLength, cType, out var cF32, out var cBits);
        var expected = (double[])c0.Clone();
        GemmKernels.Reference(m, n, k, batch0, batch1, a, la, b, lb, expected, lc, accumulate);
        // Per output: sum_k |a_ik b_kj|, the scale of its accumulation error.
        var scale = new double[cLength];
        for (int z0 = 0; z0 < batch0; z0++)
            for (int z1 = 0; z1 < batch1; z1++)
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < n; j++)
                    {
                        double s = 0;
                        for (int kk = 0; kk < k; kk++) s += Math.Abs(a[la.IndexOf(z0, z1, i, kk)] * b[lb.IndexOf(z0, z1, kk, j)]);
                        scale[lc.IndexOf(z0, z1, i, j)] = s + (accumulate ? Math.Abs(c0[lc.IndexOf(z0, z1, i, j)]) : 0);
                    }
        double outputUlp = cType switch { GemmElementType.F16 => 1.0 / 1024, GemmElementType.BF16 => 1.0 / 128, _ => 0 };

        foreach (var acc in fixture.Accelerators)
        {
            using var aF = acc.Allocate1D(aF32.Length > 0 ? aF32 : [0f]);
            using var aB = acc.Allocate1D(aBits.Length > 0 ? aBits : [(ushort)0]);
            using var bF = acc.Allocate1D(bF32.Length > 0 ? bF32 : [0f]);
            using var bB = acc.Allocate1D(bBits.Length > 0 ? bBits : [(ushort)0]);
            using var cF = acc.Allocate1D(cF32.Length > 0 ? cF32 : [0f]);
            using var cB = acc.Allocate1D(cBits.Length > 0 ? cBits : [(ushort)0]);
            var args = new GemmArgs(m, n, k,
                Operand(aType, aF.View, aB.View, la), Operand(bType, bF.View, bB.View, lb), Operand(cType, cF.View, cB.View, lc),
                accumulate, batch0, batch1);
            GemmKernels.Launch(acc, acc.DefaultStream, in args, version);
            acc.Synchronize();
            var got = cType == GemmElementType.F32
                ? cF.GetAsArray1D().Select(x => (double)x).ToArray()
                : cB.GetAsArray1D().Select(x => (double)ElementConvert.FromBits(x, cType)).ToArray();
            for (long i = 0; i < cLength; i++)
            {
                double tol = 1e-5 * Math.Max(scale[i], 1e-3) + outputUlp * Math.Abs(expected[i]);
                if (Math.Abs(got[i] - expected[i]) > tol)
                    Assert.Fail($"{acc.AcceleratorType} {version} m={m} n={n} k={k} batch={batch0}x{batch1} a={aOrder}/{aType} b={bOrder}/{bType} c={cType} " +
                                $"acc={accumulate}: c[{i}] = {got[i]}, expected {expected[i]} (tolerance {tol:g3})");
            }
        }
    }

    private static GemmOperand Operand(GemmElementType type, ArrayView<float> f32, ArrayView<ushort> bits, GemmLayout layout) =>
        type == GemmElementType.F32 ? GemmOperand.Float32(f32, layout) : GemmOperand.Bits16(bits, type, layout);

    public static TheoryData<int, int, int> Sizes() => new()
    {
        { 1, 1, 1 },
        { 1, 70, 3 },      // a row vector times a wide b: one row tile, two column tiles of the tensor-core kernel
        { 70, 1, 17 },
        { 13, 7, 5 },
        { 37, 41, 29 },    // primes, one tile, K crosses a 16-tile
        { 65, 66, 67 },    // one past the tensor-core tile in every dim; K crosses 32- and 16-tiles
        { 129, 3, 2 },     // one past the tiled kernel's 128-row tile
    };

    [Theory]
    [MemberData(nameof(Sizes))]
    public void TiledF32MatchesReference(int m, int n, int k) => Check(m, n, k, GemmVersion.Tiled);

    [Theory]
    [MemberData(nameof(Sizes))]
    public void TensorCoreF16MatchesReference(int m, int n, int k) =>
        Check(m, n, k, GemmVersion.TensorCore, aType: GemmElementType.F16, bType: GemmElementType.F16);

    [Theory]
    [InlineData(Order.RowMajor, Order.Transposed)]   // x @ W^T, the Linear layer
    [InlineData(Order.Transposed, Order.RowMajor)]   // dW = dy^T @ x
    [InlineData(Order.Transposed, Order.Transposed)]
    [InlineData(Order.Strided, Order.Strided)]
    public void TiledHandlesLayouts(Order aOrder, Order bOrder) => Check(37, 70, 19, GemmVersion.Tiled, aOrder, bOrder);

    [Theory]
    [InlineData(Order.RowMajor, Order.Transposed, GemmElementType.F16)]
    [InlineData(Order.Transposed, Order.RowMajor, GemmElementType.BF16)]
    [InlineData(Order.Strided, Order.Strided, GemmElementType.BF16)]
    public void TensorCoreHandlesLayouts(Order aOrder, Order bOrder, GemmElementType type) =>
        Check(37, 70, 35, GemmVersion.TensorCore, aOrder, bOrder, aType: type, bType: type);

    [Theory]
    [InlineData(GemmVersion.Naive)]
    [InlineData(GemmVersion.Tiled)]
    [InlineData(GemmVersion.TensorCore)]
    public void BatchWithBroadcastAndAccumulate(GemmVersion version)
    {
        var type = version == GemmVersion.TensorCore ? GemmElementType.BF16 : GemmElementType.F32;
        // b is shared by all 2 x 3 batches (a weight), c accumulates.
        Check(9, 11, 20, version, Order.RowMajor, Order.Broadcast, batch0: 2, batch1: 3, accumulate: true, aType: type, bType: type);
        Check(5, 3, 7, version, Order.Broadcast, Order.Transposed, batch0: 3, batch1: 1, aType: type, bType: type);
    }

    [Theory]
    [InlineData(GemmVersion.Naive, GemmElementType.F16, GemmElementType.BF16, GemmElementType.F32)]
    [InlineData(GemmVersion.Tiled, GemmElementType.BF16, GemmElementType.F32, GemmElementType.F32)]
    [InlineData(GemmVersion.Tiled, GemmElementType.F16, GemmElementType.F16, GemmElementType.F16)]
    [InlineData(GemmVersion.Tiled, GemmElementType.BF16, GemmElementType.BF16, GemmElementType.BF16)]
    [InlineData(GemmVersion.TensorCore, GemmElementType.F16, GemmElementType.F16, GemmElementType.F16)]
    [InlineData(GemmVersion.TensorCore, GemmElementType.BF16, GemmElementType.BF16, GemmElementType.BF16)]
    public void MixedPrecision(GemmVersion version, GemmElementType aType, GemmElementType bType, GemmElementType cType) =>
        Check(23, 31, 45, version, Order.RowMajor, Order.Transposed, accumulate: cType != GemmElementType.F32,
              aType: aType, bType: bType, cType: cType);

    [Fact]
    public void NaiveMatchesReference()
    {
        Check(1, 1, 1, GemmVersion.Naive);
        Check(19, 17, 33, GemmVersion.Naive, Order.Transposed, Order.Strided);
    }

    [Theory]
    [InlineData(GemmVersion.Tiled)]
    [InlineData(GemmVersion.TensorCore)]
    public void EmptyKZeroesOrKeepsC(GemmVersion version)
    {
        var type = version == GemmVersion.TensorCore ? GemmElementType.F16 : GemmElementType.F32;
        Check(3, 5, 0, version, aType: type, bType: type);                     // c = 0
        Check(3, 5, 0, version, accumulate: true, aType: type, bType: type);   // c unchanged
    }

    [Fact]
    public void AutoPicksTiledOffCudaAndTensorCoreNeedsMatchingHalves()
    {
        var acc = fixture.Accelerators[0];
        using var f = acc.Allocate1D<float>(16);
        using var h = acc.Allocate1D<ushort>(16);
        var f32 = GemmOperand.Float32(f.View, GemmLayout.RowMajor(4, 4));
        var f16 = GemmOperand.Bits16(h.View, GemmElementType.F16, GemmLayout.RowMajor(4, 4));
        var bf16 = GemmOperand.Bits16(h.View, GemmElementType.BF16, GemmLayout.RowMajor(4, 4));
        Assert.Equal(GemmVersion.Tiled, GemmKernels.Resolve(acc, new GemmArgs(4, 4, 4, f16, f16, f32), GemmVersion.Auto));
        Assert.Throws<NotSupportedException>(() => GemmKernels.Resolve(acc, new GemmArgs(4, 4, 4, f16, bf16, f32), GemmVersion.TensorCore));
        Assert.Throws<NotSupportedException>(() => GemmKernels.Resolve(acc, new GemmArgs(4, 4, 4, f32, f32, f32), GemmVersion.TensorCore));
    }

    [Fact]
    public void ValidationRejectsOutOfRangeLayoutsBeforeLaunching()
    {
        var acc = fixture.Accelerators[0];
        using var small = acc.Allocate1D<float>(15);
        using var ok = acc.Allocate1D<float>(16);
        var good = GemmOperand.Float32(ok.View, GemmLayout.RowMajor(4, 4));
        var shortView = GemmOperand.Float32(small.View, GemmLayout.RowMajor(4, 4));
        var negative = GemmOperand.Float32(ok.View, new GemmLayout(0, -4, 1));
        var batched = GemmOperand.Float32(ok.View, new GemmLayout(0, 4, 1, 16));   // a second batch would start past the end
        Assert.Throws<ArgumentOutOfRangeException>(() => GemmKernels.Launch(acc, acc.DefaultStream, new GemmArgs(4, 4, 4, shortView, good, good)));
        Assert.Throws<ArgumentOutOfRangeException>(() => GemmKernels.Launch(acc, acc.DefaultStream, new GemmArgs(4, 4, 4, good, good, shortView)));
        Assert.Throws<ArgumentOutOfRangeException>(() => GemmKernels.Launch(acc, acc.DefaultStream, new GemmArgs(4, 4, 4, good, negative, good)));
        Assert.Throws<ArgumentOutOfRangeException>(() => GemmKernels.Launch(acc, acc.DefaultStream, new GemmArgs(4, 4, 4, batched, good, good, Batch0: 2)));
        Assert.Throws<ArgumentOutOfRangeException>(() => GemmKernels.Launch(acc, acc.DefaultStream, new GemmArgs(-1, 4, 4, good, good, good)));
        Assert.Throws<ArgumentException>(() => GemmKernels.Launch(acc, acc.DefaultStream, new GemmArgs(4, 4, 4, default, good, good)));
    }

    [Fact]
    public void KernelsCompileToPtxForSm80()
    {
        Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmParams> naive = GemmKernels.MatMulForwardKernel1<float, F32Element, float, F32Element, float, F32Element>;
        Action<ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmParams> tiled = GemmKernels.MatMulForwardKernel2<float, F32Element, float, F32Element, float, F32Element>;
        Action<ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, GemmParams> tiledHalf = GemmKernels.MatMulForwardKernel2<ushort, F16Element, ushort, BF16Element, ushort, BF16Element>;
        Action<ArrayView<ushort>, ArrayView<ushort>, ArrayView<float>, GemmParams> tcF16 = GemmKernels.MatMulForwardKernel3<F16Element, float, F32Element>;
        Action<ArrayView<ushort>, ArrayView<ushort>, ArrayView<ushort>, GemmParams> tcBF16 = GemmKernels.MatMulForwardKernel3<BF16Element, ushort, BF16Element>;
        Assert.Contains(".target sm_80", PtxCompiler.Compile(naive.Method));
        Assert.Equal(2, PtxCompiler.Count(PtxCompiler.Compile(tiled.Method), "bar.sync"));
        Assert.Contains("cvt.f32.f16", PtxCompiler.Compile(tiledHalf.Method));
        // 8 mma per 16-wide K step (2 x 4 fragments of the warp's 32 x 32 tile), of the requested type.
        Assert.Equal(8, PtxCompiler.Count(PtxCompiler.Compile(tcF16.Method), "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "));
        Assert.Equal(8, PtxCompiler.Count(PtxCompiler.Compile(tcBF16.Method), "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "));
    }
}
