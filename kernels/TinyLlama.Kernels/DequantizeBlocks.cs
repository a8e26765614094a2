// Decoding llama.cpp's Q8_0, Q4_K and Q6_K blocks on ILGPU (layouts and reference converters in
// src/TinyLlama.Core/Quantization/QuantType.cs; CPU definition CpuBackend.Quantized.cs), and the
// dequantize kernel built on it:
//
//     y [N, K] = dequantize(w),   w: N rows of K / BlockSize blocks, bytes
//
// One decoder per format (IBlockFormat.Decode4) turns weights e .. e + 3 of a row (e a multiple of 4, so
// the four share one block, one scale and, for the K-quants, one sub-block) into f32. Every kernel that
// reads these formats goes through it: the dequantize kernel here (one thread per 4 weights) and the fused
// products of MatMulBlocks.cs, so the bit layout is written down once. Q4_0 is read as 16-bit words by its
// own kernels (MatMulQ4.cs).
//
// The f32 arithmetic follows the reference's operation order, whose products are exact (Q8_0: q d; Q4_K:
// (d sc) q - dmin m with d sc and dmin m exact), or rounded once (Q6_K: (d sc) q), so a compiler's FMA
// contraction cannot change a value and the results equal the CPU's bit for bit; f64 outputs are the f32
// values widened. Traffic of the dequantize kernel: w once (its scales once per 4 weights, from cache) and
// y once.
//
// Validation: the host checks the sizes against the views' lengths before a launch (Validate), as an
// out-of-range index on the CPU accelerator takes the process down.
using System.Runtime.CompilerServices;
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>How one block format is read by the kernels (implemented by empty structs, used as default(TFormat)).</summary>
internal interface IBlockFormat
{
    /// <summary>Weights per block.</summary>
    int BlockSize { get; }

    /// <summary>Bytes per block.</summary>
    int BlockBytes { get; }

    /// <summary>Weights e .. e + 3 (e a multiple of 4) of the row of w starting at byte <paramref name="row"/>.</summary>
    void Decode4(ArrayView<byte> w, int row, int e, out float v0, out float v1, out float v2, out float v3);
}

/// <summary>Q8_0 (34 bytes per 32 weights): weight = q d.</summary>
internal readonly struct Q8_0Format : IBlockFormat
{
    public int BlockSize => 32;
    public int BlockBytes => 34;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Decode4(ArrayView<byte> w, int row, int e, out float v0, out float v1, out float v2, out float v3)
    {
        int b = row + (e >> 5) * 34;
        int q = b + 2 + (e & 31);
        float d = DequantizeBlocksKernels.HalfAt(w, b);
        v0 = (sbyte)w[q] * d;
        v1 = (sbyte)w[q + 1] * d;
        v2 = (sbyte)w[q + 2] * d;
        v3 = (sbyte)w[q + 3] * d;
    }
}

/// <summary>Q4_K (144 bytes per 256 weights): weight = (d sc) q - dmin m of its sub-block.</summary>
internal readonly struct Q4_KFormat : IBlockFormat
{
    public int BlockSize => 256;
    public int BlockBytes => 144;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Decode4(ArrayView<byte> w, int row, int e, out float v0, out float v1, out float v2, out float v3)
    {
        int b = row + (e >> 8) * 144;
        int j = e & 255, sub = j >> 5;                         // sub-block 0..7: pair j / 64, low or high nibble
        int q = b + 16 + 32 * (j >> 6) + (j & 31);
        int shift = (sub & 1) << 2;
        int s = b + 4;                                         // the 12 packed scale bytes
        int sc, m;
        if (sub < 4)
        {
            sc = w[s + sub] & 63;
            m = w[s + sub + 4] & 63;
        }
        else
        {
            sc = (w[s + sub + 4] & 0x0F) | ((w[s + sub - 4] >> 6) << 4);
            m = (w[s + sub + 4] >> 4) | ((w[s + sub] >> 6) << 4);
        }
        float scale = DequantizeBlocksKernels.HalfAt(w, b) * sc, min = DequantizeBlocksKernels.HalfAt(w, b + 2) * m;
        v0 = scale * ((w[q] >> shift) & 0x0F) - min;
        v1 = scale * ((w[q + 1] >> shift) & 0x0F) - min;
        v2 = scale * ((w[q + 2] >> shift) & 0x0F) - min;
        v3 = scale * ((w[q + 3] >> shift) & 0x0F) - min;
    }
}

/// <summary>Q6_K (210 bytes per 256 weights): weight = (d sc) (q - 32) of its 16-weight sub-block.</summary>
internal readonly struct Q6_KFormat : IBlockFormat
{
    public int BlockSize => 256;
    public int BlockBytes => 210;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Decode4(ArrayView<byte> w, int row, int e, out float v0, out float v1, out float v2, out float v3)
    {
        int b = row + (e >> 8) * 210;
        int j = e & 255, h = j >> 7, t = (j >> 5) & 3, l = j & 31;    // half, quarter, position (l..l+3 share l / 16)
        int low = b + 64 * h + 32 * (t & 1) + l, high = b + 128 + 32 * h + l;
        int lowShift = (t >> 1) << 2, highShift = 2 * t;
        float scale = DequantizeBlocksKernels.HalfAt(w, b + 208) * (sbyte)w[b + 192 + 8 * h + 2 * t + (l >> 4)];
        v0 = scale * ((((w[low] >> lowShift) & 0x0F) | (((w[high] >> highShift) & 3) << 4)) - 32);
        v1 = scale * ((((w[low + 1] >> lowShift) & 0x0F) | (((w[high + 1] >> highShift) & 3) << 4)) - 32);
        v2 = scale * ((((w[low + 2] >> lowShift) & 0x0F) | (((w[high + 2] >> highShift) & 3) << 4)) - 32);
        v3 = scale * ((((w[low + 3] >> lowShift) & 0x0F) | (((w[high + 3] >> highShift) & 3) << 4)) - 32);
    }
}

/// <summary>The dequantization kernel over any <see cref="IBlockFormat"/> and its host-side check.</summary>
public static class DequantizeBlocksKernels
{
    /// <summary>binary16 at bytes b, b + 1 (little-endian) of w, as f32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float HalfAt(ArrayView<byte> w, int b) => HalfBits.ToSingle((ushort)(w[b] | (w[b + 1] << 8)));

    /// <summary>y[4i .. 4i + 3] = weights 4i .. 4i + 3 of w [N, K] in row-major order (K a multiple of the block size).</summary>
    internal static void DequantizeKernel<TFormat, T, E>(Index1D i, ArrayView<byte> w, ArrayView<T> y, int k)
        where TFormat : struct, IBlockFormat where T : unmanaged where E : struct, IElement<T>
    {
        TFormat f = default;
        E el = default;
        int first = i << 2;
        int n = first / k, e = first - n * k;
        f.Decode4(w, n * (k / f.BlockSize) * f.BlockBytes, e, out float v0, out float v1, out float v2, out float v3);
        y[first] = el.FromDouble(v0);
        y[first + 1] = el.FromDouble(v1);
        y[first + 2] = el.FromDouble(v2);
        y[first + 3] = el.FromDouble(v3);
    }

    /// <summary>Throws unless y [N, K] = dequantize(w) with blocks of blockSize weights in blockBytes bytes fits views of these lengths.</summary>
    public static void Validate(string name, int blockSize, int blockBytes, int n, int k, long wBytes, long yLength)
    {
        if (n < 0 || k <= 0 || k % blockSize != 0)
            throw new ArgumentOutOfRangeException(nameof(k), $"dequantize {name}: N={n} K={k} (K must be a positive multiple of {blockSize})");
        long bytes = (long)n * (k / blockSize) * blockBytes;
        if (bytes > wBytes) throw new ArgumentException($"dequantize {name}: w needs {bytes} bytes, its view has {wBytes}");
        if ((long)n * k > yLength) throw new ArgumentException($"dequantize {name}: y needs {(long)n * k} elements, its view has {yLength}");
        if ((long)n * k > int.MaxValue || bytes > int.MaxValue)
            throw new NotSupportedException($"dequantize {name}: N={n} K={k} exceed int indexing");
    }
}
