// Batched GEMM on ILGPU: for every batch index z = (z0, z1)
//     c[z] (M, N) = a[z] (M, K) @ b[z] (K, N)        (or c[z] += a[z] @ b[z] when accumulating)
// with f32 accumulation; a and b are f32, f16 or bf16 (16-bit types as raw bits in ushort views), c is
// f32, f16 or bf16. Every operand is addressed through a GemmLayout (offset, row stride, column stride,
// two batch strides), so a transposed operand is just swapped strides and a broadcast batch is a zero
// batch stride: the backward pass needs no explicit transposes.
// The op: IBackend.MatMul (src/TinyLlama.Core/Backends/IBackend.cs); its CPU definition is
// CpuBackend.MatMul; the reference here is GemmKernels.Reference (a plain f64 triple loop).
//
// Versions (llm.c dev/cuda style; GemmVersion picks one, Auto picks the best the device has):
//   1  MatMulForwardKernel1 (GemmNaive.cs): one thread per output element, a K-long dot product straight
//      from global memory. Traffic: 2K loads per output, i.e. A is read N times and B M times (caches
//      soften it). A baseline and a second opinion, not a fast path.
//   2  MatMulForwardKernel2 (GemmTiled.cs): shared-memory tiling with register blocking. A group of 256
//      threads owns a 128 x 64 tile of c; K advances 16 at a time through a 128 x 16 tile of a and a
//      16 x 64 tile of b in shared memory (as f32, whatever the input type), and each thread accumulates
//      an 8 x 4 block of c in 32 registers. Global traffic: a is read N/64 times and b M/128 times;
//      shared traffic: 12 loads per 32 FMAs. The next K tile is fetched into registers while the current
//      one is multiplied. Works for every type combination and every device.
//   3  MatMulForwardKernel3 (GemmTensorCore.cs): f16/bf16 tensor cores through inline PTX
//      mma.sync.aligned.m16n8k16 (sm_80+; what ILGPU 1.5 can reach on Ampere and Hopper). A group of 4
//      warps owns a 64 x 64 tile of c, each warp a 32 x 32 sub-tile = 2 x 4 mma tiles of 16 x 8, K
//      advances 32 at a time through shared memory holding pairs of 16-bit values in 32-bit words (the
//      register format mma consumes). On a non-CUDA accelerator the same kernel runs with each K step's mma
//      emulated through shared memory, so its data movement is tested on ILGPU's CPU accelerator.
//
// Validation: every size, stride and offset is checked on the host against the views' lengths before a
// launch (an out-of-range index on the CPU accelerator takes the process down), and all indices must fit
// in int (the kernels index with 32-bit arithmetic). Launches are asynchronous on the given stream.
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

// ILGPU's CPU accelerator emits its kernel wrappers into a dynamic assembly of this name; it must see the
// internal kernel parameter and element types.
[assembly: InternalsVisibleTo("ILGPURuntime")]

namespace TinyLlama.Kernels;

/// <summary>Which GEMM kernel runs (see the header of GemmKernels.cs).</summary>
public enum GemmVersion
{
    /// <summary>Tensor cores on a CUDA device (sm_80+) when a and b are both f16 or both bf16, else tiled.</summary>
    Auto = 0,
    /// <summary>Version 1: one thread per output, no tiling.</summary>
    Naive = 1,
    /// <summary>Version 2: shared-memory tiles, 8 x 4 register blocks, any types.</summary>
    Tiled = 2,
    /// <summary>Version 3: mma.sync m16n8k16 (emulated through shared memory off CUDA); a and b both f16 or both bf16.</summary>
    TensorCore = 3,
}

/// <summary>
/// Where the elements of a batch of matrices lie in a flat buffer: element (row, col) of batch (z0, z1)
/// is at Offset + z0 * BatchStride0 + z1 * BatchStride1 + row * RowStride + col * ColStride.
/// All values are in elements and must be non-negative.
/// </summary>
public readonly record struct GemmLayout(long Offset, long RowStride, long ColStride, long BatchStride0 = 0, long BatchStride1 = 0)
{
    /// <summary>Dense row-major matrices of <paramref name="cols"/> columns, batches one after another.</summary>
    public static GemmLayout RowMajor(int rows, int cols, int batch1 = 1, long offset = 0) =>
        new(offset, cols, 1, (long)rows * cols * batch1, (long)rows * cols);

    /// <summary>The flat index of element (row, col) of batch (z0, z1).</summary>
    public long IndexOf(int z0, int z1, int row, int col) =>
        Offset + z0 * BatchStride0 + z1 * BatchStride1 + row * RowStride + col * ColStride;
}

/// <summary>One GEMM operand: a buffer, its element type and its layout.</summary>
public readonly struct GemmOperand
{
    /// <summary>The element type; selects <see cref="F32"/> or <see cref="Bits"/>.</summary>
    public GemmElementType Type { get; }

    /// <summary>The data when <see cref="Type"/> is F32.</summary>
    public ArrayView<float> F32 { get; }

    /// <summary>The raw 16-bit data when <see cref="Type"/> is F16 or BF16.</summary>
    public ArrayView<ushort> Bits { get; }

    /// <summary>Where each element lies.</summary>
    public GemmLayout Layout { get; }

    private GemmOperand(GemmElementType type, ArrayView<float> f32, ArrayView<ushort> bits, GemmLayout layout)
    {
        Type = type;
        F32 = f32;
        Bits = bits;
        Layout = layout;
    }

    /// <summary>An f32 operand.</summary>
    public static GemmOperand Float32(ArrayView<float> data, GemmLayout layout) => new(GemmElementType.F32, data, default, layout);

    /// <summary>An f16 or bf16 operand (<paramref name="type"/>) stored as raw bits.</summary>
    public static GemmOperand Bits16(ArrayView<ushort> bits, GemmElementType type, GemmLayout layout)
    {
        if (type == GemmElementType.F32) throw new ArgumentException("use Float32 for f32 operands", nameof(type));
        return new(type, default, bits, layout);
    }

    /// <summary>Number of elements in the underlying view.</summary>
    public long Length => Type == GemmElementType.F32 ? F32.Length : Bits.Length;

    internal bool IsValid => Type == GemmElementType.F32 ? F32.IsValid : Bits.IsValid;
}

/// <summary>
/// One batched GEMM: c = a @ b (+ c) over Batch0 x Batch1 matrices of c (M, N), a (M, K), b (K, N).
/// </summary>
public readonly record struct GemmArgs(int M, int N, int K, GemmOperand A, GemmOperand B, GemmOperand C,
                                       bool Accumulate = false, int Batch0 = 1, int Batch1 = 1);

/// <summary>Scalar kernel parameters: sizes and the int-sized layouts of a, b and c.</summary>
internal struct GemmParams
{
    public int M, N, K, Batch0, Batch1, Accumulate;
    public int AOffset, ARowStride, AColStride, ABatchStride0, ABatchStride1;
    public int BOffset, BRowStride, BColStride, BBatchStride0, BBatchStride1;
    public int COffset, CRowStride, CColStride, CBatchStride0, CBatchStride1;

    /// <summary>Batch matrices in total.</summary>
    public readonly int BatchCount => Batch0 * Batch1;

    /// <summary>Start of batch z of a (the other two the same way).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly int ABase(int z)
    {
        int z0 = z / Batch1;
        return AOffset + z0 * ABatchStride0 + (z - z0 * Batch1) * ABatchStride1;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly int BBase(int z)
    {
        int z0 = z / Batch1;
        return BOffset + z0 * BBatchStride0 + (z - z0 * Batch1) * BBatchStride1;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly int CBase(int z)
    {
        int z0 = z / Batch1;
        return COffset + z0 * CBatchStride0 + (z - z0 * Batch1) * CBatchStride1;
    }
}

/// <summary>Host-side launcher of the GEMM kernels; kernels are compiled once per accelerator and cached.</summary>
public static partial class GemmKernels
{
    /// <summary>CUDA's limit on the grid's y and z extents; larger batches loop inside the kernel.</summary>
    private const int MaxGridYZ = 65535;

    /// <summary>
    /// Launches c = a @ b (+ c) on <paramref name="stream"/> without waiting. Throws on any size, stride,
    /// offset or type the kernels cannot serve, before anything is launched.
    /// </summary>
    public static void Launch(Accelerator accelerator, AcceleratorStream stream, in GemmArgs args, GemmVersion version = GemmVersion.Auto)
    {
        ArgumentNullException.ThrowIfNull(accelerator);
        ArgumentNullException.ThrowIfNull(stream);
        var p = Validate(in args);
        version = Resolve(accelerator, in args, version);
        if (args.M == 0 || args.N == 0 || p.BatchCount == 0) return;
        if (args.K == 0 && args.Accumulate) return;   // c += 0

        switch (args.A.Type)
        {
            case GemmElementType.F32: DispatchB<float, F32Element>(accelerator, stream, in args, p, version, args.A.F32); break;
            case GemmElementType.F16: DispatchB<ushort, F16Element>(accelerator, stream, in args, p, version, args.A.Bits); break;
            default: DispatchB<ushort, BF16Element>(accelerator, stream, in args, p, version, args.A.Bits); break;
        }
    }

    /// <summary>The version <see cref="Launch"/> would run for these arguments on this accelerator.</summary>
    public static GemmVersion Resolve(Accelerator accelerator, in GemmArgs args, GemmVersion version)
    {
        bool sameHalf = args.A.Type != GemmElementType.F32 && args.A.Type == args.B.Type;
        if (version == GemmVersion.Auto)
            return sameHalf && IsTensorCoreDevice(accelerator) ? GemmVersion.TensorCore : GemmVersion.Tiled;
        if (version == GemmVersion.TensorCore && !sameHalf)
            throw new NotSupportedException($"gemm: the tensor-core kernel needs a and b both f16 or both bf16, got {args.A.Type} and {args.B.Type}");
        if (version is not (GemmVersion.Naive or GemmVersion.Tiled or GemmVersion.TensorCore))
            throw new ArgumentOutOfRangeException(nameof(version), version, "gemm: unknown version");
        return version;
    }

    /// <summary>True on a CUDA device of compute capability 8.0 or newer (mma.sync m16n8k16 with f16 and bf16).</summary>
    public static bool IsTensorCoreDevice(Accelerator accelerator) =>
        accelerator is CudaAccelerator cuda && cuda.Architecture.Major >= 8;

    private static void DispatchB<TA, EA>(Accelerator acc, AcceleratorStream stream, in GemmArgs args, GemmParams p, GemmVersion version, ArrayView<TA> a)
        where TA : unmanaged where EA : struct, IGemmElement<TA>
    {
        switch (args.B.Type)
        {
            case GemmElementType.F32: DispatchC<TA, EA, float, F32Element>(acc, stream, in args, p, version, a, args.B.F32); break;
            case GemmElementType.F16: DispatchC<TA, EA, ushort, F16Element>(acc, stream, in args, p, version, a, args.B.Bits); break;
            default: DispatchC<TA, EA, ushort, BF16Element>(acc, stream, in args, p, version, a, args.B.Bits); break;
        }
    }

    private static void DispatchC<TA, EA, TB, EB>(Accelerator acc, AcceleratorStream stream, in GemmArgs args, GemmParams p, GemmVersion version,
                                                  ArrayView<TA> a, ArrayView<TB> b)
        where TA : unmanaged where EA : struct, IGemmElement<TA>
        where TB : unmanaged where EB : struct, IGemmElement<TB>
    {
        switch (args.C.Type)
        {
            case GemmElementType.F32: Run<TA, EA, TB, EB, float, F32Element>(acc, stream, p, version, a, b, args.C.F32); break;
            case GemmElementType.F16: Run<TA, EA, TB, EB, ushort, F16Element>(acc, stream, p, version, a, b, args.C.Bits); break;
            default: Run<TA, EA, TB, EB, ushort, BF16Element>(acc, stream, p, version, a, b, args.C.Bits); break;
        }
    }

    private static void Run<TA, EA, TB, EB, TC, EC>(Accelerator acc, AcceleratorStream stream, GemmParams p, GemmVersion version,
                                                    ArrayView<TA> a, ArrayView<TB> b, ArrayView<TC> c)
        where TA : unmanaged where EA : struct, IGemmElement<TA>
        where TB : unmanaged where EB : struct, IGemmElement<TB>
        where TC : unmanaged where EC : struct, IGemmElement<TC>
    {
        int gridZ = Math.Min(p.BatchCount, MaxGridYZ);
        switch (version)
        {
            case GemmVersion.Naive:
            {
                var kernel = KernelCache.Get(acc, ("gemm1", typeof(EA), typeof(EB), typeof(EC)),
                    static a => a.LoadKernel<ArrayView<TA>, ArrayView<TB>, ArrayView<TC>, GemmParams>(MatMulForwardKernel1<TA, EA, TB, EB, TC, EC>));
                var grid = new Index3D(Ceil(p.N, NaiveTile), CheckGridY(Ceil(p.M, NaiveTile)), gridZ);
                kernel(stream, new KernelConfig(grid, new Index3D(NaiveTile, NaiveTile, 1)), a, b, c, p);
                break;
            }
            case GemmVersion.Tiled:
            {
                RequireGroup(acc, TiledThreads, 0, TiledSharedBytes, "tiled gemm");
                var kernel = KernelCache.Get(acc, ("gemm2", typeof(EA), typeof(EB), typeof(EC)),
                    static a => a.LoadKernel<ArrayView<TA>, ArrayView<TB>, ArrayView<TC>, GemmParams>(MatMulForwardKernel2<TA, EA, TB, EB, TC, EC>));
                var grid = new Index3D(Ceil(p.N, TiledBN), CheckGridY(Ceil(p.M, TiledBM)), gridZ);
                kernel(stream, new KernelConfig(grid, new Index3D(TiledThreads, 1, 1)), a, b, c, p);
                break;
            }
            default:
            {
                if (typeof(TA) != typeof(ushort) || typeof(EA) != typeof(EB))
                    throw new NotSupportedException("gemm: the tensor-core kernel needs a and b both f16 or both bf16");
                RequireGroup(acc, TcThreads, KernelsInfo.WarpSize, TcSharedBytes, "tensor-core gemm");
                var a16 = a.Cast<ushort>();
                var b16 = b.Cast<ushort>();
                var grid = new Index3D(Ceil(p.N, TcBN), CheckGridY(Ceil(p.M, TcBM)), gridZ);
                var config = new KernelConfig(grid, new Index3D(TcThreads, 1, 1));
                if (typeof(EA) == typeof(F16Element))
                    KernelCache.Get(acc, ("gemm3", typeof(EA), typeof(EC), typeof(void)),
                        static a => a.LoadKernel<ArrayView<ushort>, ArrayView<ushort>, ArrayView<TC>, GemmParams>(MatMulForwardKernel3<F16Element, TC, EC>))
                        (stream, config, a16, b16, c, p);
                else
                    KernelCache.Get(acc, ("gemm3", typeof(EA), typeof(EC), typeof(void)),
                        static a => a.LoadKernel<ArrayView<ushort>, ArrayView<ushort>, ArrayView<TC>, GemmParams>(MatMulForwardKernel3<BF16Element, TC, EC>))
                        (stream, config, a16, b16, c, p);
                break;
            }
        }
    }

    // ---------------------------------------------------------------- validation

    /// <summary>Checks every size, type and index range and packs the int-sized kernel parameters.</summary>
    internal static GemmParams Validate(in GemmArgs args)
    {
        if (args.M < 0 || args.N < 0 || args.K < 0)
            throw new ArgumentOutOfRangeException(nameof(args), $"gemm: negative size M={args.M} N={args.N} K={args.K}");
        if (args.Batch0 < 0 || args.Batch1 < 0)
            throw new ArgumentOutOfRangeException(nameof(args), $"gemm: negative batch {args.Batch0} x {args.Batch1}");
        if ((long)args.Batch0 * args.Batch1 > int.MaxValue)
            throw new NotSupportedException($"gemm: batch {args.Batch0} x {args.Batch1} does not fit in int");
        var p = new GemmParams
        {
            M = args.M, N = args.N, K = args.K, Batch0 = args.Batch0, Batch1 = Math.Max(args.Batch1, 1),
            Accumulate = args.Accumulate ? 1 : 0,
        };
        if (args.Batch1 == 0) p.Batch0 = 0;
        if (args.M == 0 || args.N == 0 || p.BatchCount == 0) return p;

        // a and b are read only when K > 0; c is always written.
        if (args.K > 0)
        {
            CheckOperand("a", args.A, args.M, args.K, args.Batch0, args.Batch1, out p.AOffset, out p.ARowStride, out p.AColStride, out p.ABatchStride0, out p.ABatchStride1);
            CheckOperand("b", args.B, args.K, args.N, args.Batch0, args.Batch1, out p.BOffset, out p.BRowStride, out p.BColStride, out p.BBatchStride0, out p.BBatchStride1);
        }
        CheckOperand("c", args.C, args.M, args.N, args.Batch0, args.Batch1, out p.COffset, out p.CRowStride, out p.CColStride, out p.CBatchStride0, out p.CBatchStride1);
        return p;
    }

    private static void CheckOperand(string name, in GemmOperand op, int rows, int cols, int batch0, int batch1,
                                     out int offset, out int rowStride, out int colStride, out int batchStride0, out int batchStride1)
    {
        if (!op.IsValid) throw new ArgumentException($"gemm: {name} has no buffer");
        if (op.Type is not (GemmElementType.F32 or GemmElementType.F16 or GemmElementType.BF16))
            throw new ArgumentException($"gemm: {name} has unknown type {op.Type}");
        var l = op.Layout;
        if (l.Offset < 0 || l.RowStride < 0 || l.ColStride < 0 || l.BatchStride0 < 0 || l.BatchStride1 < 0)
            throw new ArgumentOutOfRangeException(name, $"gemm: {name} layout {l} has a negative offset or stride");
        if (l.Offset > int.MaxValue || l.RowStride > int.MaxValue || l.ColStride > int.MaxValue || l.BatchStride0 > int.MaxValue || l.BatchStride1 > int.MaxValue)
            throw new NotSupportedException($"gemm: {name} layout {l} does not fit in int");
        // All terms are non-negative, so the largest index is the last element of the last batch.
        long last = l.Offset + (batch0 - 1) * l.BatchStride0 + (batch1 - 1) * l.BatchStride1 + (rows - 1) * l.RowStride + (cols - 1) * l.ColStride;
        if (last >= op.Length)
            throw new ArgumentOutOfRangeException(name, $"gemm: {name} ({batch0} x {batch1} x {rows} x {cols}, layout {l}) reaches index {last} of a view of {op.Length}");
        if (last > int.MaxValue)
            throw new NotSupportedException($"gemm: {name} reaches index {last}, beyond int indexing");
        offset = (int)l.Offset;
        rowStride = (int)l.RowStride;
        colStride = (int)l.ColStride;
        batchStride0 = (int)l.BatchStride0;
        batchStride1 = (int)l.BatchStride1;
    }

    /// <summary>Throws unless the accelerator runs groups of <paramref name="threads"/> threads with this much shared memory.</summary>
    internal static void RequireGroup(Accelerator acc, int threads, int warpSize, int sharedBytes, string what)
    {
        if (acc.MaxNumThreadsPerGroup < threads)
            throw new NotSupportedException($"{what}: needs groups of {threads} threads, {acc.Name} allows {acc.MaxNumThreadsPerGroup}");
        if (warpSize != 0 && acc.WarpSize != warpSize)
            throw new NotSupportedException($"{what}: needs a warp of {warpSize} threads, {acc.Name} has {acc.WarpSize} (create ILGPU's CPU accelerator with new CPUDevice(32, warps, multiprocessors))");
        if (acc.MaxSharedMemoryPerGroup < sharedBytes)
            throw new NotSupportedException($"{what}: needs {sharedBytes} bytes of shared memory per group, {acc.Name} has {acc.MaxSharedMemoryPerGroup}");
    }

    private static int CheckGridY(int groups) =>
        groups <= MaxGridYZ ? groups : throw new NotSupportedException($"gemm: {groups} row tiles exceed the grid limit {MaxGridYZ}");

    private static int Ceil(int x, int tile) => (x + tile - 1) / tile;

    // ---------------------------------------------------------------- CPU reference

    /// <summary>
    /// The definition: c[z] = a[z] @ b[z] (+ c[z]) in f64, over host arrays already widened to double and
    /// laid out as the kernels' operands.
    /// </summary>
    public static void Reference(int m, int n, int k, int batch0, int batch1,
                                 double[] a, GemmLayout la, double[] b, GemmLayout lb, double[] c, GemmLayout lc, bool accumulate)
    {
        for (int z0 = 0; z0 < batch0; z0++)
            for (int z1 = 0; z1 < batch1; z1++)
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < n; j++)
                    {
                        double acc = 0;
                        for (int kk = 0; kk < k; kk++)
                            acc += a[la.IndexOf(z0, z1, i, kk)] * b[lb.IndexOf(z0, z1, kk, j)];
                        long ci = lc.IndexOf(z0, z1, i, j);
                        c[ci] = accumulate ? c[ci] + acc : acc;
                    }
    }
}

/// <summary>Kernels compiled once per accelerator, keyed by a value naming the kernel and its type arguments.</summary>
internal static class KernelCache
{
    private static readonly ConditionalWeakTable<Accelerator, ConcurrentDictionary<object, Delegate>> Table = new();

    public static TDelegate Get<TDelegate>(Accelerator accelerator, object key, Func<Accelerator, TDelegate> load) where TDelegate : Delegate
    {
        var kernels = Table.GetValue(accelerator, static _ => new ConcurrentDictionary<object, Delegate>());
        return (TDelegate)kernels.GetOrAdd(key, static (_, state) => state.load(state.accelerator), (accelerator, load));
    }
}
