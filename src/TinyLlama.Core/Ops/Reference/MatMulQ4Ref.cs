// Naive int4 product: the definition the fast paths (CpuBackend.Quantized.cs, kernels/MatMulQ4.cs) are
// tested against. Q4_0 weights (Quantization/QuantType.cs) are expanded to floats, which is exact, and
// multiplied in double precision:
//   y [M, N] = x [M, K] @ dequantize(w)^T,  w [N, K / 32 * 18] bytes.
using TinyLlama.Quantization;

namespace TinyLlama.Ops.Reference;

/// <summary>Reference Q4_0 product over dense row-major arrays, in double precision.</summary>
public static class MatMulQ4Ref
{
    /// <summary>y [M, N] = x [M, K] @ dequantize(w [N, K / 32 * 18])^T, written.</summary>
    public static void Forward(double[] x, byte[] w, int m, int n, int k, double[] y)
    {
        // x is (M, K); w is N rows of K / 32 blocks; y is (M, N)
        var weights = Dequantize(w, n, k);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double acc = 0;
                for (int e = 0; e < k; e++) acc += x[i * k + e] * weights[j * k + e];
                y[i * n + j] = acc;
            }
    }

    /// <summary>The [N, K] values of Q4_0 weights, row-major.</summary>
    public static float[] Dequantize(byte[] w, int n, int k)
    {
        var traits = QuantType.Q4_0.Traits();
        int rowBytes = traits.RowBytes(k);
        var values = new float[n * k];
        for (int j = 0; j < n; j++) traits.Dequantize(w.AsSpan(j * rowBytes, rowBytes), values.AsSpan(j * k, k));
        return values;
    }
}
