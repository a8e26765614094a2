// Dequantization of llama.cpp's Q8_0, Q4_K and Q6_K blocks on ILGPU (layouts and reference converters in
// src/TinyLlama.Core/Quantization/QuantType.cs; CPU definition CpuBackend.Quantized.cs):
//
//     y [N, K] = dequantize(w),   w: N rows of K / BlockSize blocks, bytes
//
// One thread per output weight i = n K + e: it finds its block, reads the block's scale(s) and its own
// bits, and writes the weight. The f32 arithmetic follows the reference's operation order, whose products
// are exact (Q8_0: q d; Q4_K: (d sc) q - dmin m with d sc and dmin m exact), or rounded once (Q6_K:
// (d sc) q), so a compiler's FMA contraction cannot change a value and the results equal the CPU's
// bit for bit; f64 outputs are the f32 values widened. Traffic: w once (its scales once per weight, from
// cache) and y once. IlgpuBackend.Quantized.cs serves the product with these formats by expanding w into a
// pooled buffer with these kernels and running the GEMM (Q4_0 has its own fused kernels, MatMulQ4.cs).
//
// Validation: the host checks the sizes against the views' lengths before a launch (Validate), as an
// out-of-range index on the CPU accelerator takes the process down.
using ILGPU;

namespace TinyLlama.Kernels;

/// <summary>Per-format dequantization kernels and their host-side check.</summary>
public static class DequantizeBlocksKernels
{
    /// <summary>binary16 at bytes b, b + 1 (little-endian) of w, as f32.</summary>
    private static float HalfAt(ArrayView<byte> w, int b) => HalfBits.ToSingle((ushort)(w[b] | (w[b + 1] << 8)));

    /// <summary>Q8_0 (34 bytes per 32 weights): y[i] = q d.</summary>
    public static void DequantizeQ8_0Kernel<T, E>(Index1D i, ArrayView<byte> w, ArrayView<T> y, int k)
        where T : unmanaged where E : struct, IElement<T>
    {
        int n = i / k, e = i - n * k;
        int b = (n * (k >> 5) + (e >> 5)) * 34;
        float value = (sbyte)w[b + 2 + (e & 31)] * HalfAt(w, b);
        y[i] = default(E).FromDouble(value);
    }

    /// <summary>Q4_K (144 bytes per 256 weights): y[i] = (d sc) q - dmin m for weight i's sub-block.</summary>
    public static void DequantizeQ4_KKernel<T, E>(Index1D i, ArrayView<byte> w, ArrayView<T> y, int k)
        where T : unmanaged where E : struct, IElement<T>
    {
        int n = i / k, e = i - n * k;
        int b = (n * (k >> 8) + (e >> 8)) * 144;
        int j = e & 255, sub = j >> 5;                         // sub-block 0..7: pair j / 64, low or high nibble
        int q = w[b + 16 + 32 * (j >> 6) + (j & 31)];
        q = (sub & 1) == 0 ? q & 0x0F : q >> 4;
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
        float scale = HalfAt(w, b) * sc, min = HalfAt(w, b + 2) * m;
        float value = scale * q - min;
        y[i] = default(E).FromDouble(value);
    }

    /// <summary>Q6_K (210 bytes per 256 weights): y[i] = (d sc) (q - 32) for weight i's sub-block.</summary>
    public static void DequantizeQ6_KKernel<T, E>(Index1D i, ArrayView<byte> w, ArrayView<T> y, int k)
        where T : unmanaged where E : struct, IElement<T>
    {
        int n = i / k, e = i - n * k;
        int b = (n * (k >> 8) + (e >> 8)) * 210;
        int j = e & 255, h = j >> 7, t = (j >> 5) & 3, l = j & 31;    // half, quarter, position
        int low = w[b + 64 * h + 32 * (t & 1) + l];
        low = t < 2 ? low & 0x0F : low >> 4;
        int q = (low | (((w[b + 128 + 32 * h + l] >> (2 * t)) & 3) << 4)) - 32;
        float scale = HalfAt(w, b + 208) * (sbyte)w[b + 192 + 8 * h + 2 * t + (l >> 4)];
        float value = scale * q;
        y[i] = default(E).FromDouble(value);
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
