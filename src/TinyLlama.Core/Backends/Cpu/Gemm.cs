// General matrix multiply on the CPU: C[M, N] (+)= A[M, K] @ B[K, N] with A and B read through
// arbitrary row/column strides (so transposed operands need no copy) and converted to the compute
// type (f32 or f64) while they are packed.
//
// The algorithm is the GotoBLAS/BLIS layering (Goto & van de Geijn, "Anatomy of High-Performance
// Matrix Multiplication", ACM TOMS 2008; Van Zee & van de Geijn, "BLIS", ACM TOMS 2015):
//
//   for jc in 0..N step NC                                  B block [KC, NC] lives in L3
//     for pc in 0..K step KC
//       pack B[pc:+KC, jc:+NC] into NR-column micro-panels (shared; Gemm.Pack.cs)
//       for ic in 0..M step MC                       (parallel)
//         pack A[ic:+MC, pc:+KC] into MR-row micro-panels     A block [MC, KC] lives in L2
//         for jr in 0..NC step NR                             B micro-panel [KC, NR] lives in L1
//           for ir in 0..MC step MR
//             C[ic+ir:+MR, jc+jr:+NR] (+)= micro-kernel(A panel, B panel)   (Gemm.Kernels.cs)
//
// Edge tiles (M, N not multiples of MR, NR) come out of zero-padded panels: the kernel computes a
// full tile into a scratch tile and only the valid part is written to C. K is split into KC blocks;
// the first block stores (or adds, when accumulating) and the later ones add.
//
// Threads: B's block is packed by all threads and shared. Each task of the parallel loop packs one
// A block itself (so it sits in the L2 of the core that uses it) and sweeps it across all of B's
// micro-panels, or across a share of them when there are too few A blocks for the threads. The A
// blocks are an equal share of the MR-row micro-panels, and their number is a multiple of the
// thread count, so the threads finish together. Batched products of many small matrices are split
// across matrices by CpuBackend.MatMul instead, each GEMM then running on one thread. Products with
// M <= 4 (decoding) skip packing altogether: Gemm.Small.cs.
//
// Blocking (f32, AVX2 6x16 kernel, Zen 3 with 32 KiB L1d / 512 KiB L2 per core / 32 MiB L3):
// KC = 256 makes a B micro-panel 16 KiB (half of L1, leaving room for the A panel and C tile);
// MC = 144 makes an A block 144 KiB of L2; NC = 4096 makes B's block 4 MiB of L3. f64 halves MC and
// NC so the blocks hold about the same bytes. Measured alternatives (KC 192-512, MC 48-192) were
// within noise of these on this machine; see benchmarks/RESULTS.md.
//
// Memory: the B pack buffer belongs to a per-thread job object and each thread keeps its own A
// block buffer; both are pinned arrays, grown when needed and reused, so a steady-state call
// allocates no pack memory (Parallel.For itself allocates its small bookkeeping objects).
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

/// <summary>A matrix operand: a storage and the strides of its rows and columns.</summary>
internal readonly record struct GemmOperand(CpuStorage Storage, int RowStride, int ColStride);

/// <summary>Which micro-kernel family runs the GEMM.</summary>
internal enum GemmKernel
{
    /// <summary>The fastest one this CPU supports (or <see cref="Gemm.KernelOverride"/> when set).</summary>
    Auto,
    /// <summary>AVX-512F, 6 x 32 (f32) / 6 x 16 (f64).</summary>
    Avx512,
    /// <summary>AVX2 + FMA3, 6 x 16 (f32) / 6 x 8 (f64).</summary>
    Avx2,
    /// <summary>System.Numerics.Vector&lt;T&gt;, 4 x 2 vectors: runs everywhere.</summary>
    Portable,
}

/// <summary>
/// Per-call tuning knobs; zero fields take the defaults. Tests shrink the blocks to exercise every
/// loop on small inputs. A specific Kernel always runs the blocked path with that kernel; Auto may
/// take the unpacked small-M path (Gemm.Small.cs).
/// </summary>
internal readonly record struct GemmOptions(GemmKernel Kernel = GemmKernel.Auto, int KC = 0, int MC = 0, int NC = 0);

internal static unsafe partial class Gemm
{
    /// <summary>
    /// When not <see cref="GemmKernel.Auto"/>, the kernel used by calls that ask for Auto (i.e. all of
    /// CpuBackend.MatMul). For tests and benchmarks that compare kernel paths; leave Auto otherwise.
    /// </summary>
    internal static GemmKernel KernelOverride { get; set; } = GemmKernel.Auto;

    /// <summary>Default K block (see the file header); f32 and f64 alike.</summary>
    internal const int DefaultKC = 256;

    /// <summary>Default M block for f32 (rounded up to a multiple of MR; halved for f64).</summary>
    internal const int DefaultMC = 144;

    /// <summary>Default N block for f32 (rounded up to a multiple of NR; halved for f64).</summary>
    internal const int DefaultNC = 4096;

    /// <summary>Below this many flops (2 M N K) a GEMM runs on the calling thread only.</summary>
    internal const long ParallelMinFlops = 1L << 21;

    /// <summary>True when the kernel family can run on this CPU.</summary>
    internal static bool IsSupported(GemmKernel kernel) => kernel switch
    {
        GemmKernel.Auto => true,
        GemmKernel.Avx512 => Avx512Kernel<float>.IsSupported,
        GemmKernel.Avx2 => Avx2Kernel<float>.IsSupported,
        GemmKernel.Portable => true,
        _ => false,
    };

    /// <summary>The concrete kernel a request resolves to on this CPU.</summary>
    internal static GemmKernel Resolve(GemmKernel kernel)
    {
        if (kernel == GemmKernel.Auto) kernel = KernelOverride;
        if (kernel == GemmKernel.Auto)
            return Avx512Kernel<float>.IsSupported ? GemmKernel.Avx512 : Avx2Kernel<float>.IsSupported ? GemmKernel.Avx2 : GemmKernel.Portable;
        if (!IsSupported(kernel)) throw new NotSupportedException($"GEMM kernel {kernel} is not supported on this CPU");
        return kernel;
    }

    /// <summary>
    /// C (row-major with leading dimension ldc, starting at cOffset) = or += A @ B, A [m, k] and
    /// B [k, n] read through their strides from aOffset / bOffset. Computes in f64 when C is F64
    /// (A and B must then be F64), else in f32 (A and B may be F32, F16 or BF16).
    /// With parallel, large products use all cores.
    /// </summary>
    public static void Run(int m, int n, int k, GemmOperand a, int aOffset, GemmOperand b, int bOffset,
                           CpuStorage c, int cOffset, int ldc, bool accumulate, bool parallel, GemmOptions options = default)
    {
        if (m <= 0 || n <= 0) return;
        if (c.DType is not (DType.F32 or DType.F64)) throw new NotSupportedException($"GEMM output of dtype {c.DType.Name()}");
        var args = new GemmArgs
        {
            M = m, N = n, K = k,
            AType = a.Storage.DType, AOffset = aOffset, ARowStride = a.RowStride, AColStride = a.ColStride,
            BType = b.Storage.DType, BOffset = bOffset, BRowStride = b.RowStride, BColStride = b.ColStride,
            Ldc = ldc, Accumulate = accumulate, Parallel = parallel, Options = options,
        };
        fixed (byte* pa = &DataRef(a.Storage))
        fixed (byte* pb = &DataRef(b.Storage))
        fixed (byte* pc = &DataRef(c))
        {
            args.A = pa;
            args.B = pb;
            args.C = pc + (nint)cOffset * c.DType.SizeOf();
            if (c.DType == DType.F64) RunTyped<double>(ref args);
            else RunTyped<float>(ref args);
        }
    }

    private static void RunTyped<T>(ref GemmArgs args) where T : unmanaged
    {
        if (typeof(T) == typeof(double) ? args.AType != DType.F64 || args.BType != DType.F64 : args.AType == DType.F64 || args.BType == DType.F64)
            throw new NotSupportedException($"GEMM {args.AType.Name()} @ {args.BType.Name()} -> {(typeof(T) == typeof(double) ? "f64" : "f32")}");
        if (args.K == 0)
        {
            // An empty sum: C = 0, or C unchanged when accumulating.
            if (!args.Accumulate)
                for (int i = 0; i < args.M; i++) new Span<T>((T*)args.C + (nint)i * args.Ldc, args.N).Clear();
            return;
        }
        if (UseSmallM<T>(in args))
        {
            RunSmallM<T>(ref args);
            return;
        }
        switch (Resolve(args.Options.Kernel))
        {
            case GemmKernel.Avx512: Driver<T, Avx512Kernel<T>>.Run(ref args); break;
            case GemmKernel.Avx2: Driver<T, Avx2Kernel<T>>.Run(ref args); break;
            default: Driver<T, PortableKernel<T>>.Run(ref args); break;
        }
    }

    /// <summary>The first byte of a host storage (managed or external), for pinning.</summary>
    private static ref byte DataRef(CpuStorage s)
    {
        switch (s.DType)
        {
            case DType.F32: return ref Unsafe.As<float, byte>(ref MemoryMarshal.GetReference(s.AsSpan<float>()));
            case DType.F64: return ref Unsafe.As<double, byte>(ref MemoryMarshal.GetReference(s.AsSpan<double>()));
            case DType.F16: return ref Unsafe.As<Half, byte>(ref MemoryMarshal.GetReference(s.AsSpan<Half>()));
            case DType.BF16: return ref Unsafe.As<BFloat16, byte>(ref MemoryMarshal.GetReference(s.AsSpan<BFloat16>()));
            default: throw new NotSupportedException($"matmul operand of dtype {s.DType.Name()}");
        }
    }

    /// <summary>Everything one GEMM call needs, with the operands already pinned.</summary>
    private struct GemmArgs
    {
        public int M, N, K;
        public void* A, B, C;                  // A, B: storage starts; C: first element of the output
        public DType AType, BType;
        public nint AOffset, ARowStride, AColStride;
        public nint BOffset, BRowStride, BColStride;
        public nint Ldc;
        public bool Accumulate, Parallel;
        public GemmOptions Options;
    }

    /// <summary>Packs one micro-panel from a source of any supported storage dtype.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackPanelFrom<T>(void* storage, DType type, nint offset, nint sw, nint sk, int w, int kc, int r, T* dst)
        where T : unmanaged
    {
        switch (type)
        {
            case DType.F32: PackPanel((float*)storage + offset, sw, sk, w, kc, r, dst); break;
            case DType.F64: PackPanel((double*)storage + offset, sw, sk, w, kc, r, dst); break;
            case DType.F16: PackPanel((Half*)storage + offset, sw, sk, w, kc, r, dst); break;
            case DType.BF16: PackPanel((BFloat16*)storage + offset, sw, sk, w, kc, r, dst); break;
            default: throw new NotSupportedException($"matmul operand of dtype {type.Name()}");
        }
    }

    /// <summary>The blocked loops for one compute type and one kernel (specialised by the JIT per pair).</summary>
    private static class Driver<T, TK> where T : unmanaged where TK : struct, IGemmKernel<T>
    {
        [ThreadStatic] private static Job? cached;

        public static void Run(ref GemmArgs args)
        {
            var job = cached ??= new Job();
            if (job.Busy) job = new Job(); // re-entered on this thread (e.g. a task inlined while waiting): use a private job
            job.Busy = true;
            try { job.Execute(ref args); }
            finally { job.Busy = false; job.Args = default; }
        }

        /// <summary>Each thread's A block buffer [mc / MR, kc, MR]: packed by the thread that multiplies it, so it lands in that core's L2.</summary>
        [ThreadStatic] private static T[]? aBlockBuffer;

        /// <summary>One call's state and its reusable B pack buffer; its delegates are created once so Parallel.For gets no new closures.</summary>
        private sealed class Job
        {
            public bool Busy;
            public GemmArgs Args;
            private T[]? bBuffer;               // pinned; bPack is its 64-byte aligned start
            private T* bPack;                   // [ceil(nc / NR), kc, NR]
            private int jc, pc, kcCur, ncCur;   // current (jc, pc) block and its extents
            private int aPanels, mBlocks, jParts, bPanels, packChunks;
            private readonly Action<int> packTask, computeTask;

            public Job()
            {
                packTask = PackBTask;
                computeTask = ComputeTask;
            }

            [MethodImpl(MethodImplOptions.AggressiveOptimization)]
            public void Execute(ref GemmArgs args)
            {
                Args = args;
                int mr = TK.MR, nr = TK.NR, m = args.M, n = args.N, k = args.K;
                var o = args.Options;
                // Block sizes (see the file header): the same bytes for f32 and f64.
                int kcMax = o.KC > 0 ? o.KC : DefaultKC;
                int mcMax = RoundUp(o.MC > 0 ? o.MC : DefaultMC * 4 / sizeof(T), mr);
                int ncMax = RoundUp(o.NC > 0 ? o.NC : DefaultNC * 4 / sizeof(T), nr);
                int threads = CpuThreads.Count;
                bool parallel = args.Parallel && threads > 1 && 2L * m * n * k >= ParallelMinFlops;

                // A blocks: as few as MC allows (a multiple of the thread count when parallel, so
                // whole blocks divide evenly), each given an equal share of the MR-row micro-panels.
                aPanels = (m + mr - 1) / mr;
                mBlocks = (m + mcMax - 1) / mcMax;
                if (parallel) mBlocks = Math.Min(RoundUp(mBlocks, threads), aPanels);

                int kcAlloc = Math.Min(kcMax, k), ncAlloc = Math.Min(ncMax, n);
                bPack = Ensure(ref bBuffer, (long)((ncAlloc + nr - 1) / nr) * nr * kcAlloc);

                for (jc = 0; jc < n; jc += ncMax)
                {
                    ncCur = Math.Min(ncMax, n - jc);
                    bPanels = (ncCur + nr - 1) / nr;
                    // Split the columns too when there are too few A blocks to keep every thread
                    // busy, or a task count that does not divide evenly among the threads.
                    jParts = 1;
                    if (parallel)
                    {
                        jParts = Math.Max(1, (2 * threads + mBlocks - 1) / mBlocks);
                        while ((mBlocks * jParts) % threads != 0 && jParts < bPanels) jParts++;
                        jParts = Math.Min(jParts, bPanels);
                    }
                    for (pc = 0; pc < k; pc += kcMax)
                    {
                        kcCur = Math.Min(kcMax, k - pc);
                        packChunks = parallel && (long)bPanels * nr * kcCur >= 1 << 15 ? Math.Min(bPanels, 2 * threads) : 1;
                        if (packChunks > 1) System.Threading.Tasks.Parallel.For(0, packChunks, CpuThreads.Options, packTask);
                        else PackBTask(0);
                        int tasks = mBlocks * jParts;
                        if (parallel && tasks > 1) System.Threading.Tasks.Parallel.For(0, tasks, CpuThreads.Options, computeTask);
                        else for (int t = 0; t < tasks; t++) ComputeTask(t);
                    }
                }
            }

            /// <summary>Packs chunk <paramref name="chunk"/> of packChunks of the B micro-panels of the current block.</summary>
            [MethodImpl(MethodImplOptions.AggressiveOptimization)]
            private void PackBTask(int chunk)
            {
                ref readonly var g = ref Args;
                int nr = TK.NR;
                int start = (int)((long)bPanels * chunk / packChunks), end = (int)((long)bPanels * (chunk + 1) / packChunks);
                for (int q = start; q < end; q++)
                {
                    // Columns jc + q NR ..; B[p, j] is at BOffset + p * BRowStride + j * BColStride.
                    int j0 = jc + q * nr;
                    PackPanelFrom(g.B, g.BType, g.BOffset + pc * g.BRowStride + j0 * g.BColStride, g.BColStride, g.BRowStride,
                                  Math.Min(nr, ncCur - q * nr), kcCur, nr, bPack + (nint)q * nr * kcCur);
                }
            }

            /// <summary>
            /// Tile task t: packs A block t / jParts (rows i0 .. i0 + mc, the current K block) and runs the
            /// micro-kernel over it against B micro-panel range t % jParts.
            /// </summary>
            [MethodImpl(MethodImplOptions.AggressiveOptimization)]
            private void ComputeTask(int t)
            {
                ref readonly var g = ref Args;
                int mr = TK.MR, nr = TK.NR;
                int ib = t / jParts, jp = t % jParts;
                int i0 = (int)((long)aPanels * ib / mBlocks) * mr, mcCur = Math.Min((int)((long)aPanels * (ib + 1) / mBlocks) * mr, g.M) - i0;
                int q0 = (int)((long)bPanels * jp / jParts), q1 = (int)((long)bPanels * (jp + 1) / jParts);
                bool add = g.Accumulate || pc > 0;
                nint kc = kcCur, ldc = g.Ldc;

                // A[i, p] is at AOffset + i * ARowStride + p * AColStride.
                T* aBlock = Ensure(ref aBlockBuffer, (long)RoundUp(mcCur, mr) * kc);
                for (int ir = 0; ir < mcCur; ir += mr)
                    PackPanelFrom(g.A, g.AType, g.AOffset + (i0 + ir) * g.ARowStride + pc * g.AColStride, g.ARowStride, g.AColStride,
                                  Math.Min(mr, mcCur - ir), kcCur, mr, aBlock + ir * kc);

                T* c = (T*)g.C;
                T* scratch = stackalloc T[TK.MR * TK.NR]; // [MR, NR] tile for edges
                for (int q = q0; q < q1; q++)
                {
                    T* bPanel = bPack + (nint)q * nr * kc;
                    int cols = Math.Min(nr, ncCur - q * nr), j = jc + q * nr;
                    for (int ir = 0; ir < mcCur; ir += mr)
                    {
                        int rows = Math.Min(mr, mcCur - ir);
                        T* aPanel = aBlock + ir * kc;
                        T* cTile = c + (i0 + ir) * ldc + j;
                        if (rows == mr && cols == nr)
                        {
                            TK.Run(kc, aPanel, bPanel, cTile, ldc, add);
                        }
                        else
                        {
                            TK.Run(kc, aPanel, bPanel, scratch, nr, false);
                            MergeTile(scratch, nr, cTile, ldc, rows, cols, add);
                        }
                    }
                }
            }

            /// <summary>A pinned, 64-byte aligned buffer of at least length elements (grown, never shrunk).</summary>
            private static T* Ensure(ref T[]? buffer, long length)
            {
                int pad = 64 / sizeof(T);
                if (buffer is null || buffer.Length < length + pad)
                    buffer = GC.AllocateUninitializedArray<T>(checked((int)(length + pad)), pinned: true);
                nint p = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buffer));
                return (T*)((p + 63) & ~(nint)63);
            }
        }
    }

    /// <summary>c[:rows, :cols] (=|+=) tile[:rows, :cols]; c has row stride ldc, tile ldt.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MergeTile<T>(T* tile, nint ldt, T* c, nint ldc, int rows, int cols, bool add) where T : unmanaged
    {
        for (int i = 0; i < rows; i++)
        {
            T* src = tile + i * ldt, dst = c + i * ldc;
            if (!add)
            {
                Unsafe.CopyBlockUnaligned(dst, src, (uint)(cols * sizeof(T)));
            }
            else if (typeof(T) == typeof(float))
            {
                for (int j = 0; j < cols; j++) ((float*)dst)[j] += ((float*)src)[j];
            }
            else
            {
                for (int j = 0; j < cols; j++) ((double*)dst)[j] += ((double*)src)[j];
            }
        }
    }

    private static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;
}
