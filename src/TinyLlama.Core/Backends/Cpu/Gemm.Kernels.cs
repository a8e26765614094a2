// GEMM micro-kernels: each computes one MR x NR tile of C from a packed A micro-panel and a packed
// B micro-panel, keeping the whole tile in vector registers for the entire K loop (the "register
// block" of Goto & van de Geijn, "Anatomy of High-Performance Matrix Multiplication", ACM TOMS 2008,
// and of BLIS, Van Zee & van de Geijn, ACM TOMS 2015).
//
// Packed layouts (written by Gemm.Pack.cs), for a K block of length kc:
//   a-panel [kc, MR]: a[p * MR + i] = A[i, p]   (MR consecutive rows, interleaved per k step)
//   b-panel [kc, NR]: b[p * NR + j] = B[p, j]   (NR consecutive columns, one contiguous row per k step)
// so each k step reads MR broadcast scalars and NR / lanes contiguous vectors, and performs
// MR * NR / lanes fused multiply-adds into the accumulators:  c[i, :] += a[p, i] * b[p, :].
//
// Versions (one generic routine per ISA serves both f32 and f64; Fmadd picks the instruction):
//   Avx512Kernel  6 x (2 x zmm)  = 6x32 f32 / 6x16 f64, 12 zmm accumulators + 2 B + 1 A of 32 zmm.
//   Avx2Kernel    6 x (2 x ymm)  = 6x16 f32 / 6x8 f64,  12 ymm accumulators + 2 B + 1 A of 16 ymm.
//                 Per k step: 2 loads + 6 broadcasts feed 12 FMAs; with 2 FMA ports of latency 4-5
//                 (Zen 3, Skylake) 12 independent chains are enough to keep both ports busy.
//   PortableKernel 4 x (2 x Vector<T>): System.Numerics.Vector<T> (NEON on ARM64, SSE/AVX on x64,
//                 software elsewhere); the fallback and the one the tests can force on any machine.
// The x86 kernels unroll the K loop by 4 (loop overhead is then 4 scalar ops per 48 FMAs) and
// prefetch their C tile before the K loop. The AVX2 kernel's inner loop was checked with
// DOTNET_JitDisasm: 12 ymm accumulators stay in registers, B loads and broadcasts fold into
// vmovups / vbroadcastss, no spills. The AVX-512 kernel has the same shape but could not be run
// on the development machine (AMD Zen 3, no AVX-512); it is covered by the tests wherever they
// run on an AVX-512 CPU.
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TinyLlama.Backends.Cpu.GemmKernelHelpers;

namespace TinyLlama.Backends.Cpu;

/// <summary>
/// A register-blocked micro-kernel: c[MR, NR] (row stride ldc) = or += a-panel^T @ b-panel over kc steps.
/// Implemented by structs so the driver, generic over the kernel, is specialised and the call inlined.
/// </summary>
internal unsafe interface IGemmKernel<T> where T : unmanaged
{
    /// <summary>Rows of the register tile (rows of A per packed micro-panel).</summary>
    static abstract int MR { get; }

    /// <summary>Columns of the register tile (columns of B per packed micro-panel).</summary>
    static abstract int NR { get; }

    /// <summary>True when the instructions this kernel needs exist on this CPU.</summary>
    static abstract bool IsSupported { get; }

    /// <summary>c[i, j] (=|+=) sum_p a[p * MR + i] * b[p * NR + j] for i &lt; MR, j &lt; NR; kc &gt;= 1.</summary>
    static abstract void Run(nint kc, T* a, T* b, T* c, nint ldc, bool add);
}

/// <summary>6 x (2 x Vector512) tile with AVX-512F FMA.</summary>
internal readonly unsafe struct Avx512Kernel<T> : IGemmKernel<T> where T : unmanaged
{
    public static int MR => 6;
    public static int NR => 2 * Vector512<T>.Count;
    public static bool IsSupported => Avx512F.IsSupported;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<T> Fmadd(Vector512<T> a, Vector512<T> b, Vector512<T> c)
    {
        // c + a * b with one rounding; typeof(T) tests are constants after JIT specialisation.
        if (typeof(T) == typeof(float)) return Avx512F.FusedMultiplyAdd(a.AsSingle(), b.AsSingle(), c.AsSingle()).As<float, T>();
        return Avx512F.FusedMultiplyAdd(a.AsDouble(), b.AsDouble(), c.AsDouble()).As<double, T>();
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(nint kc, T* a, T* b, T* c, nint ldc, bool add)
    {
        int w = Vector512<T>.Count;
        Vector512<T> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector512<T> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        PrefetchTile(c, ldc, 6, 2 * w * sizeof(T));
        nint p = 0;
        Vector512<T> b0, b1, ai;
        for (; p <= kc - 4; p += 4)
        {
            // Four k steps: c[i, :] += a[p, i] * b[p, :] for the 6 rows.
            b0 = Vector512.Load(b); b1 = Vector512.Load(b + w);
            ai = Vector512.Create(a[0]); c00 = Fmadd(ai, b0, c00); c01 = Fmadd(ai, b1, c01);
            ai = Vector512.Create(a[1]); c10 = Fmadd(ai, b0, c10); c11 = Fmadd(ai, b1, c11);
            ai = Vector512.Create(a[2]); c20 = Fmadd(ai, b0, c20); c21 = Fmadd(ai, b1, c21);
            ai = Vector512.Create(a[3]); c30 = Fmadd(ai, b0, c30); c31 = Fmadd(ai, b1, c31);
            ai = Vector512.Create(a[4]); c40 = Fmadd(ai, b0, c40); c41 = Fmadd(ai, b1, c41);
            ai = Vector512.Create(a[5]); c50 = Fmadd(ai, b0, c50); c51 = Fmadd(ai, b1, c51);
            b0 = Vector512.Load(b + 1 * 2 * w); b1 = Vector512.Load(b + 1 * 2 * w + w);
            ai = Vector512.Create(a[6]); c00 = Fmadd(ai, b0, c00); c01 = Fmadd(ai, b1, c01);
            ai = Vector512.Create(a[7]); c10 = Fmadd(ai, b0, c10); c11 = Fmadd(ai, b1, c11);
            ai = Vector512.Create(a[8]); c20 = Fmadd(ai, b0, c20); c21 = Fmadd(ai, b1, c21);
            ai = Vector512.Create(a[9]); c30 = Fmadd(ai, b0, c30); c31 = Fmadd(ai, b1, c31);
            ai = Vector512.Create(a[10]); c40 = Fmadd(ai, b0, c40); c41 = Fmadd(ai, b1, c41);
            ai = Vector512.Create(a[11]); c50 = Fmadd(ai, b0, c50); c51 = Fmadd(ai, b1, c51);
            b0 = Vector512.Load(b + 2 * 2 * w); b1 = Vector512.Load(b + 2 * 2 * w + w);
            ai = Vector512.Create(a[12]); c00 = Fmadd(ai, b0, c00); c01 = Fmadd(ai, b1, c01);
            ai = Vector512.Create(a[13]); c10 = Fmadd(ai, b0, c10); c11 = Fmadd(ai, b1, c11);
            ai = Vector512.Create(a[14]); c20 = Fmadd(ai, b0, c20); c21 = Fmadd(ai, b1, c21);
            ai = Vector512.Create(a[15]); c30 = Fmadd(ai, b0, c30); c31 = Fmadd(ai, b1, c31);
            ai = Vector512.Create(a[16]); c40 = Fmadd(ai, b0, c40); c41 = Fmadd(ai, b1, c41);
            ai = Vector512.Create(a[17]); c50 = Fmadd(ai, b0, c50); c51 = Fmadd(ai, b1, c51);
            b0 = Vector512.Load(b + 3 * 2 * w); b1 = Vector512.Load(b + 3 * 2 * w + w);
            ai = Vector512.Create(a[18]); c00 = Fmadd(ai, b0, c00); c01 = Fmadd(ai, b1, c01);
            ai = Vector512.Create(a[19]); c10 = Fmadd(ai, b0, c10); c11 = Fmadd(ai, b1, c11);
            ai = Vector512.Create(a[20]); c20 = Fmadd(ai, b0, c20); c21 = Fmadd(ai, b1, c21);
            ai = Vector512.Create(a[21]); c30 = Fmadd(ai, b0, c30); c31 = Fmadd(ai, b1, c31);
            ai = Vector512.Create(a[22]); c40 = Fmadd(ai, b0, c40); c41 = Fmadd(ai, b1, c41);
            ai = Vector512.Create(a[23]); c50 = Fmadd(ai, b0, c50); c51 = Fmadd(ai, b1, c51);
            a += 4 * 6;
            b += 4 * 2 * w;
        }
        for (; p < kc; p++)
        {
            b0 = Vector512.Load(b); b1 = Vector512.Load(b + w);
            ai = Vector512.Create(a[0]); c00 = Fmadd(ai, b0, c00); c01 = Fmadd(ai, b1, c01);
            ai = Vector512.Create(a[1]); c10 = Fmadd(ai, b0, c10); c11 = Fmadd(ai, b1, c11);
            ai = Vector512.Create(a[2]); c20 = Fmadd(ai, b0, c20); c21 = Fmadd(ai, b1, c21);
            ai = Vector512.Create(a[3]); c30 = Fmadd(ai, b0, c30); c31 = Fmadd(ai, b1, c31);
            ai = Vector512.Create(a[4]); c40 = Fmadd(ai, b0, c40); c41 = Fmadd(ai, b1, c41);
            ai = Vector512.Create(a[5]); c50 = Fmadd(ai, b0, c50); c51 = Fmadd(ai, b1, c51);
            a += 6;
            b += 2 * w;
        }
        if (add)
        {
            c00 += Vector512.Load(c); c01 += Vector512.Load(c + w);
            c10 += Vector512.Load(c + ldc); c11 += Vector512.Load(c + ldc + w);
            c20 += Vector512.Load(c + 2 * ldc); c21 += Vector512.Load(c + 2 * ldc + w);
            c30 += Vector512.Load(c + 3 * ldc); c31 += Vector512.Load(c + 3 * ldc + w);
            c40 += Vector512.Load(c + 4 * ldc); c41 += Vector512.Load(c + 4 * ldc + w);
            c50 += Vector512.Load(c + 5 * ldc); c51 += Vector512.Load(c + 5 * ldc + w);
        }
        c00.Store(c); c01.Store(c + w);
        c10.Store(c + ldc); c11.Store(c + ldc + w);
        c20.Store(c + 2 * ldc); c21.Store(c + 2 * ldc + w);
        c30.Store(c + 3 * ldc); c31.Store(c + 3 * ldc + w);
        c40.Store(c + 4 * ldc); c41.Store(c + 4 * ldc + w);
        c50.Store(c + 5 * ldc); c51.Store(c + 5 * ldc + w);
    }
}

/// <summary>6 x (2 x Vector256) tile with AVX2-era FMA3.</summary>
internal readonly unsafe struct Avx2Kernel<T> : IGemmKernel<T> where T : unmanaged
{
    public static int MR => 6;
    public static int NR => 2 * Vector256<T>.Count;
    public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<T> Fmadd(Vector256<T> a, Vector256<T> b, Vector256<T> c)
    {
        if (typeof(T) == typeof(float)) return Fma.MultiplyAdd(a.AsSingle(), b.AsSingle(), c.AsSingle()).As<float, T>();
        return Fma.MultiplyAdd(a.AsDouble(), b.AsDouble(), c.AsDouble()).As<double, T>();
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(nint kc, T* a, T* b, T* c, nint ldc, bool add)
    {
        int w = Vector256<T>.Count;
        Vector256<T> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<T> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        PrefetchTile(c, ldc, 6, 2 * w * sizeof(T));
        nint p = 0;
        Vector256<T> b0, b1, ai;
        for (; p <= kc - 4; p += 4)
        {
            // Four k steps: c[i, :] += a[p, i] * b[p, :] for the 6 rows.
            b0 = Vector256.Load(b); b1 = Vector256.Load(b + w);
            ai = Vector256.Create(a[0]); c00 = Fmadd(ai, b0, c00); c01 = Fmadd(ai, b1, c01);
            ai = Vector256.Create(a[1]); c10 = Fmadd(ai, b0, c10); c11 = Fmadd(ai, b1, c11);
            ai = Vector256.Create(a[2]); c20 = Fmadd(ai, b0, c20); c21 = Fmadd(ai, b1, c21);
            ai = Vector256.Create(a[3]); c30 = Fmadd(ai, b0, c30); c31 = Fmadd(ai, b1, c31);
            ai = Vector256.Create(a[4]); c40 = Fmadd(ai, b0, c40); c41 = Fmadd(ai, b1, c41);
            ai = Vector256.Create(a[5]); c50 = Fmadd(ai, b0, c50); c51 = Fmadd(ai, b1, c51);
            b0 = Vector256.Load(b + 1 * 2 * w); b1 = Vector256.Load(b + 1 * 2 * w + w);
            ai = Vector256.Create(a[6]); c00 = Fmadd(ai, b0, c00); c01 = Fmadd(ai, b1, c01);
            ai = Vector256.Create(a[7]); c10 = Fmadd(ai, b0, c10); c11 = Fmadd(ai, b1, c11);
            ai = Vector256.Create(a[8]); c20 = Fmadd(ai, b0, c20); c21 = Fmadd(ai, b1, c21);
            ai = Vector256.Create(a[9]); c30 = Fmadd(ai, b0, c30); c31 = Fmadd(ai, b1, c31);
            ai = Vector256.Create(a[10]); c40 = Fmadd(ai, b0, c40); c41 = Fmadd(ai, b1, c41);
            ai = Vector256.Create(a[11]); c50 = Fmadd(ai, b0, c50); c51 = Fmadd(ai, b1, c51);
            b0 = Vector256.Load(b + 2 * 2 * w); b1 = Vector256.Load(b + 2 * 2 * w + w);
            ai = Vector256.Create(a[12]); c00 = Fmadd(ai, b0, c00); c01 = Fmadd(ai, b1, c01);
            ai = Vector256.Create(a[13]); c10 = Fmadd(ai, b0, c10); c11 = Fmadd(ai, b1, c11);
            ai = Vector256.Create(a[14]); c20 = Fmadd(ai, b0, c20); c21 = Fmadd(ai, b1, c21);
            ai = Vector256.Create(a[15]); c30 = Fmadd(ai, b0, c30); c31 = Fmadd(ai, b1, c31);
            ai = Vector256.Create(a[16]); c40 = Fmadd(ai, b0, c40); c41 = Fmadd(ai, b1, c41);
            ai = Vector256.Create(a[17]); c50 = Fmadd(ai, b0, c50); c51 = Fmadd(ai, b1, c51);
            b0 = Vector256.Load(b + 3 * 2 * w); b1 = Vector256.Load(b + 3 * 2 * w + w);
            ai = Vector256.Create(a[18]); c00 = Fmadd(ai, b0, c00); c01 = Fmadd(ai, b1, c01);
            ai = Vector256.Create(a[19]); c10 = Fmadd(ai, b0, c10); c11 = Fmadd(ai, b1, c11);
            ai = Vector256.Create(a[20]); c20 = Fmadd(ai, b0, c20); c21 = Fmadd(ai, b1, c21);
            ai = Vector256.Create(a[21]); c30 = Fmadd(ai, b0, c30); c31 = Fmadd(ai, b1, c31);
            ai = Vector256.Create(a[22]); c40 = Fmadd(ai, b0, c40); c41 = Fmadd(ai, b1, c41);
            ai = Vector256.Create(a[23]); c50 = Fmadd(ai, b0, c50); c51 = Fmadd(ai, b1, c51);
            a += 4 * 6;
            b += 4 * 2 * w;
        }
        for (; p < kc; p++)
        {
            b0 = Vector256.Load(b); b1 = Vector256.Load(b + w);
            ai = Vector256.Create(a[0]); c00 = Fmadd(ai, b0, c00); c01 = Fmadd(ai, b1, c01);
            ai = Vector256.Create(a[1]); c10 = Fmadd(ai, b0, c10); c11 = Fmadd(ai, b1, c11);
            ai = Vector256.Create(a[2]); c20 = Fmadd(ai, b0, c20); c21 = Fmadd(ai, b1, c21);
            ai = Vector256.Create(a[3]); c30 = Fmadd(ai, b0, c30); c31 = Fmadd(ai, b1, c31);
            ai = Vector256.Create(a[4]); c40 = Fmadd(ai, b0, c40); c41 = Fmadd(ai, b1, c41);
            ai = Vector256.Create(a[5]); c50 = Fmadd(ai, b0, c50); c51 = Fmadd(ai, b1, c51);
            a += 6;
            b += 2 * w;
        }
        if (add)
        {
            c00 += Vector256.Load(c); c01 += Vector256.Load(c + w);
            c10 += Vector256.Load(c + ldc); c11 += Vector256.Load(c + ldc + w);
            c20 += Vector256.Load(c + 2 * ldc); c21 += Vector256.Load(c + 2 * ldc + w);
            c30 += Vector256.Load(c + 3 * ldc); c31 += Vector256.Load(c + 3 * ldc + w);
            c40 += Vector256.Load(c + 4 * ldc); c41 += Vector256.Load(c + 4 * ldc + w);
            c50 += Vector256.Load(c + 5 * ldc); c51 += Vector256.Load(c + 5 * ldc + w);
        }
        c00.Store(c); c01.Store(c + w);
        c10.Store(c + ldc); c11.Store(c + ldc + w);
        c20.Store(c + 2 * ldc); c21.Store(c + 2 * ldc + w);
        c30.Store(c + 3 * ldc); c31.Store(c + 3 * ldc + w);
        c40.Store(c + 4 * ldc); c41.Store(c + 4 * ldc + w);
        c50.Store(c + 5 * ldc); c51.Store(c + 5 * ldc + w);
    }
}

/// <summary>4 x (2 x Vector&lt;T&gt;) tile: portable (any ISA; software when SIMD is not accelerated).</summary>
internal readonly unsafe struct PortableKernel<T> : IGemmKernel<T> where T : unmanaged
{
    public static int MR => 4;
    public static int NR => 2 * Vector<T>.Count;
    public static bool IsSupported => true;

    // A fused multiply-add where the CPU has one (x64 with FMA3, ARM64), a multiply then an add where it
    // has not: Vector.FusedMultiplyAdd would compute the exact fused result in software there, one
    // element at a time through libm's fmaf (x64 without FMA, or with DOTNET_EnableAVX2=0), which made
    // this kernel about 15 times slower than a plain multiply and add.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<T> Fmadd(Vector<T> a, Vector<T> b, Vector<T> c)
    {
        if (typeof(T) == typeof(float)) return Vector.As<float, T>(Vector.MultiplyAddEstimate(Vector.As<T, float>(a), Vector.As<T, float>(b), Vector.As<T, float>(c)));
        return Vector.As<double, T>(Vector.MultiplyAddEstimate(Vector.As<T, double>(a), Vector.As<T, double>(b), Vector.As<T, double>(c)));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(nint kc, T* a, T* b, T* c, nint ldc, bool add)
    {
        int w = Vector<T>.Count;
        Vector<T> c00 = default, c01 = default, c10 = default, c11 = default;
        Vector<T> c20 = default, c21 = default, c30 = default, c31 = default;
        for (nint p = 0; p < kc; p++)
        {
            var b0 = Vector.Load(b);
            var b1 = Vector.Load(b + w);
            var ai = new Vector<T>(a[0]); c00 = Fmadd(ai, b0, c00); c01 = Fmadd(ai, b1, c01);
            ai = new Vector<T>(a[1]); c10 = Fmadd(ai, b0, c10); c11 = Fmadd(ai, b1, c11);
            ai = new Vector<T>(a[2]); c20 = Fmadd(ai, b0, c20); c21 = Fmadd(ai, b1, c21);
            ai = new Vector<T>(a[3]); c30 = Fmadd(ai, b0, c30); c31 = Fmadd(ai, b1, c31);
            a += 4;
            b += 2 * w;
        }
        if (add)
        {
            c00 += Vector.Load(c); c01 += Vector.Load(c + w);
            c10 += Vector.Load(c + ldc); c11 += Vector.Load(c + ldc + w);
            c20 += Vector.Load(c + 2 * ldc); c21 += Vector.Load(c + 2 * ldc + w);
            c30 += Vector.Load(c + 3 * ldc); c31 += Vector.Load(c + 3 * ldc + w);
        }
        c00.Store(c); c01.Store(c + w);
        c10.Store(c + ldc); c11.Store(c + ldc + w);
        c20.Store(c + 2 * ldc); c21.Store(c + 2 * ldc + w);
        c30.Store(c + 3 * ldc); c31.Store(c + 3 * ldc + w);
    }
}

/// <summary>Helpers shared by the x86 kernels.</summary>
internal static unsafe class GemmKernelHelpers
{
    /// <summary>
    /// Starts fetching the C tile (rows x rowBytes, row stride ldc elements) into L1 while the K loop
    /// runs, so the final load/store of C does not stall on a cache miss. C rows are far apart
    /// (ldc), so the hardware prefetchers do not see them coming; the K loop is long enough
    /// (kc steps of several cycles) to hide the latency.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void PrefetchTile<T>(T* c, nint ldc, int rows, int rowBytes) where T : unmanaged
    {
        if (!Sse.IsSupported) return;
        for (int i = 0; i < rows; i++)
        {
            byte* row = (byte*)(c + i * ldc);
            Sse.Prefetch0(row);
            Sse.Prefetch0(row + rowBytes - 1);
        }
    }
}
