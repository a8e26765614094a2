// Naive product with block-quantized weights: the definition the fast paths (CpuBackend.Quantized.cs,
// kernels/MatMulQ4.cs, kernels/DequantizeBlocks.cs) are tested against. The weights (any format of
// Quantization/QuantType.cs) are expanded to floats by the reference row converter and multiplied in
// double precision:
//   y [M, N] = x [M, K] @ dequantize(w)^T,  w [N, K / BlockSize * BlockBytes] bytes.
using TinyLlama.Quantization;

namespace TinyLlama.Ops.Reference;

/// <summary>Reference block-quantized product over dense row-major arrays, in double precision.</summary>
public static class MatMulQuantizedRef
{
    /// <summary>y [M, N] = x [M, K] @ dequantize(w [N, K / BlockSize * BlockBytes])^T, written.</summary>
    public static void Forward(QuantType type, double[] x, byte[] w, int m, int n, int k, double[] y)
    {
        // x is (M, K); w is N rows of K / BlockSize blocks; y is (M, N)
        var weights = Dequantize(type, w, n, k);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double acc = 0;
                for (int e = 0; e < k; e++) acc += x[i * k + e] * weights[j * k + e];
                y[i * n + j] = acc;
            }
    }

    /// <summary>The [N, K] values of weights in <paramref name="type"/>'s blocks, row-major.</summary>
    public static float[] Dequantize(QuantType type, byte[] w, int n, int k)
    {
        var traits = type.Traits();
        int rowBytes = traits.RowBytes(k);
        var values = new float[n * k];
        for (int j = 0; j < n; j++) traits.Dequantize(w.AsSpan(j * rowBytes, rowBytes), values.AsSpan(j * k, k));
        return values;
    }
}
