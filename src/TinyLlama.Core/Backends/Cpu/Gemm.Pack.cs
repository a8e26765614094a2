// GEMM packing: copies a block of a strided operand into the micro-panel layout the micro-kernels
// read (Goto & van de Geijn 2008, section 5; BLIS "packm"), converting the storage type (f32, f16,
// bf16, f64) to the compute type on the way. Packing is where all the generality lives: any row and
// column stride (transposed and expanded views included) and any dtype, so the kernels see only
// dense, aligned, zero-padded panels.
//
// One routine packs both operands, because an A micro-panel and a B micro-panel have the same shape
// once we name their dims "width" (the MR rows of A, or the NR columns of B) and "k":
//   dst[p * R + i] = src[i * sw + p * sk]  for i < w, p < kc;  dst[p * R + i] = 0 for w <= i < R
// where for A: R = MR, sw = A's row stride, sk = A's column stride;
//   and for B: R = NR, sw = B's column stride, sk = B's row stride.
// The zero padding lets the kernels always compute full tiles; the driver drops the padded part.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TinyLlama.Tensors;

namespace TinyLlama.Backends.Cpu;

internal static unsafe partial class Gemm
{
    /// <summary>
    /// Packs one micro-panel (see the file header): dst [kc, r] from the w x kc block of a TS-typed
    /// source at src, element (i, p) at src[i * sw + p * sk].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackPanel<TS, T>(TS* src, nint sw, nint sk, int w, int kc, int r, T* dst)
        where TS : unmanaged where T : unmanaged
    {
        if (sw == 1)
        {
            // The panel's width is contiguous in memory (B row-major, or A transposed): one
            // converting copy of w elements per k step.
            for (int p = 0; p < kc; p++)
            {
                ConvertRow(src + p * sk, dst + (nint)p * r, w);
                for (int i = w; i < r; i++) dst[(nint)p * r + i] = default;
            }
            return;
        }
        if (sk == 1 && typeof(TS) == typeof(float) && typeof(T) == typeof(float) && Avx.IsSupported && kc >= 8)
        {
            // k is contiguous and already f32 (A row-major, the usual activation layout; or B = W^T):
            // transpose 8 x 8 blocks in registers instead of moving one element at a time.
            PackTransposeF32((float*)src, sw, w, kc, r, (float*)dst);
            return;
        }
        if (sk == 1 && typeof(TS) != typeof(T))
        {
            // k is contiguous (A row-major, or B = W^T of a row-major weight) and needs converting:
            // convert each of the w rows with the vectorised converter into a small [w, chunk]
            // buffer, then interleave. Scalar f16 -> f32 conversion is a software routine, ~10x slower.
            const int Chunk = 128;
            T* rowsBuf = stackalloc T[Chunk * 8];
            int rowsPerPass = Math.Min(w, 8);
            for (int p0 = 0; p0 < kc; p0 += Chunk)
            {
                int len = Math.Min(Chunk, kc - p0);
                for (int i0 = 0; i0 < r; i0 += rowsPerPass)
                {
                    int rowsNow = Math.Min(rowsPerPass, r - i0);
                    for (int i = 0; i < rowsNow; i++)
                    {
                        if (i0 + i < w) ConvertRow(src + (i0 + i) * sw + p0, rowsBuf + i * Chunk, len);
                        else new Span<T>(rowsBuf + i * Chunk, len).Clear();
                    }
                    for (int p = 0; p < len; p++)
                        for (int i = 0; i < rowsNow; i++)
                            dst[(nint)(p0 + p) * r + i0 + i] = rowsBuf[i * Chunk + p];
                }
            }
            return;
        }
        // General case (A row-major: k is contiguous; or any other strides). Reading across w
        // streams at once, each walked sequentially along k, suits the hardware prefetchers.
        for (int p = 0; p < kc; p++)
        {
            TS* s = src + p * sk;
            T* d = dst + (nint)p * r;
            int i = 0;
            for (; i < w; i++) d[i] = Convert<TS, T>(s[i * sw]);
            for (; i < r; i++) d[i] = default;
        }
    }

    /// <summary>
    /// dst [kc, r] from w rows of src (row i at src + i * sw, contiguous along k): for each block of 8
    /// rows and 8 k steps, load the 8 x 8 block (rows past w read as zero), transpose it with the
    /// classic unpack / shuffle / permute2f128 sequence (8 + 8 + 8 shuffles), and store row p of the
    /// transpose (the 8 rows' values at k step p) at dst + p * r + i0.
    /// When r &lt; 8 (r = 6 or 4) the 8-wide store of step p spills into step p + 1's slots, which
    /// the next store overwrites; the very last step is stored element by element so nothing
    /// outside this panel is touched. K steps past the last multiple of 8 are copied one by one.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackTransposeF32(float* src, nint sw, int w, int kc, int r, float* dst)
    {
        int kc8 = kc & ~7;
        float* tmp = stackalloc float[8];
        for (int i0 = 0; i0 < r; i0 += 8)
        {
            int rows = Math.Min(8, w - i0);     // real rows in this block (may be <= 0 for padding blocks)
            int width = Math.Min(8, r - i0);    // slots of the panel this block fills
            float* s = src + i0 * sw;
            for (int p0 = 0; p0 < kc8; p0 += 8)
            {
                var r0 = rows > 0 ? Vector256.Load(s + p0) : Vector256<float>.Zero;
                var r1 = rows > 1 ? Vector256.Load(s + sw + p0) : Vector256<float>.Zero;
                var r2 = rows > 2 ? Vector256.Load(s + 2 * sw + p0) : Vector256<float>.Zero;
                var r3 = rows > 3 ? Vector256.Load(s + 3 * sw + p0) : Vector256<float>.Zero;
                var r4 = rows > 4 ? Vector256.Load(s + 4 * sw + p0) : Vector256<float>.Zero;
                var r5 = rows > 5 ? Vector256.Load(s + 5 * sw + p0) : Vector256<float>.Zero;
                var r6 = rows > 6 ? Vector256.Load(s + 6 * sw + p0) : Vector256<float>.Zero;
                var r7 = rows > 7 ? Vector256.Load(s + 7 * sw + p0) : Vector256<float>.Zero;
                var t0 = Avx.UnpackLow(r0, r1); var t1 = Avx.UnpackHigh(r0, r1);
                var t2 = Avx.UnpackLow(r2, r3); var t3 = Avx.UnpackHigh(r2, r3);
                var t4 = Avx.UnpackLow(r4, r5); var t5 = Avx.UnpackHigh(r4, r5);
                var t6 = Avx.UnpackLow(r6, r7); var t7 = Avx.UnpackHigh(r6, r7);
                var u0 = Avx.Shuffle(t0, t2, 0x44); var u1 = Avx.Shuffle(t0, t2, 0xEE);
                var u2 = Avx.Shuffle(t1, t3, 0x44); var u3 = Avx.Shuffle(t1, t3, 0xEE);
                var u4 = Avx.Shuffle(t4, t6, 0x44); var u5 = Avx.Shuffle(t4, t6, 0xEE);
                var u6 = Avx.Shuffle(t5, t7, 0x44); var u7 = Avx.Shuffle(t5, t7, 0xEE);
                float* d = dst + (nint)p0 * r + i0;
                Avx.Permute2x128(u0, u4, 0x20).Store(d);
                Avx.Permute2x128(u1, u5, 0x20).Store(d + r);
                Avx.Permute2x128(u2, u6, 0x20).Store(d + 2 * r);
                Avx.Permute2x128(u3, u7, 0x20).Store(d + 3 * r);
                Avx.Permute2x128(u0, u4, 0x31).Store(d + 4 * r);
                Avx.Permute2x128(u1, u5, 0x31).Store(d + 5 * r);
                Avx.Permute2x128(u2, u6, 0x31).Store(d + 6 * r);
                var last = Avx.Permute2x128(u3, u7, 0x31);
                if (width == 8 || p0 + 8 < kc) last.Store(d + 7 * r);
                else { last.Store(tmp); for (int i = 0; i < width; i++) d[7 * r + i] = tmp[i]; }
            }
            for (int p = kc8; p < kc; p++)
                for (int i = 0; i < width; i++)
                    dst[(nint)p * r + i0 + i] = i < rows ? s[i * sw + p] : 0f;
        }
    }

    /// <summary>Converts count contiguous elements, vectorised for the common type pairs.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ConvertRow<TS, T>(TS* src, T* dst, int count) where TS : unmanaged where T : unmanaged
    {
        if (typeof(TS) == typeof(T))
        {
            Unsafe.CopyBlockUnaligned(dst, src, (uint)(count * sizeof(T)));
            return;
        }
        int i = 0;
        if (typeof(TS) == typeof(BFloat16) && typeof(T) == typeof(float) && Vector256.IsHardwareAccelerated)
        {
            // bf16 -> f32 is exact: the bf16 bits become the high half of the f32 bits.
            for (; i <= count - 8; i += 8)
            {
                var bits = Vector256.WidenLower(Vector128.Load((ushort*)src + i).ToVector256Unsafe());
                Vector256.ShiftLeft(bits, 16).AsSingle().Store((float*)dst + i);
            }
        }
        else if (typeof(TS) == typeof(Half) && typeof(T) == typeof(float) && Vector256.IsHardwareAccelerated)
        {
            // (TensorPrimitives.ConvertToSingle is slow for the 16-element rows of B panels.)
            for (; i <= count - 8; i += 8)
                HalfToSingle(Vector128.Load((ushort*)src + i)).Store((float*)dst + i);
        }
        for (; i < count; i++) dst[i] = Convert<TS, T>(src[i]);
    }

    /// <summary>
    /// Eight f16 bit patterns widened exactly to f32 (F. Giesen, "half to float done quic", 2012):
    /// move exponent and mantissa into place, rebias the exponent by 127 - 15, then fix up Inf/NaN
    /// (exponent all ones) and subnormals (exponent zero, renormalised by a float subtraction).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> HalfToSingle(Vector128<ushort> bits)
    {
        var h = Vector256.WidenLower(bits.ToVector256Unsafe());                  // uint lanes
        var o = Vector256.ShiftLeft(h & Vector256.Create(0x7FFFu), 13);          // exponent + mantissa
        var exp = o & Vector256.Create(0x7C00u << 13);
        o += Vector256.Create((127u - 15u) << 23);
        o += Vector256.Equals(exp, Vector256.Create(0x7C00u << 13)) & Vector256.Create((128u - 16u) << 23);
        var sub = ((o + Vector256.Create(1u << 23)).AsSingle() - Vector256.Create(113u << 23).AsSingle()).AsUInt32();
        o = Vector256.ConditionalSelect(Vector256.Equals(exp, Vector256<uint>.Zero), sub, o);
        o |= Vector256.ShiftLeft(h & Vector256.Create(0x8000u), 16);             // sign
        return o.AsSingle();
    }

    /// <summary>One element from the storage type to the compute type (exact for f16/bf16 -> f32).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static T Convert<TS, T>(TS v) where TS : unmanaged where T : unmanaged
    {
        if (typeof(TS) == typeof(T)) return Unsafe.As<TS, T>(ref v);
        if (typeof(T) == typeof(float))
        {
            float f = Scalar.ToSingle(v);
            return Unsafe.As<float, T>(ref f);
        }
        double d = Scalar.ToDouble(v);
        return Unsafe.As<double, T>(ref d);
    }
}
