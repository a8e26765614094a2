// Naive RMSNorm: the definition the fast paths (Backends/Cpu/CpuBackend.RmsNorm.cs) are tested against.
// Plain loops over double arrays, nothing clever. Math: Zhang and Sennrich, "Root Mean Square Layer
// Normalization", 2019:  y[n, c] = x[n, c] / sqrt(mean_c' x[n, c']^2 + eps) * weight[c].
namespace TinyLlama.Ops.Reference;

/// <summary>Reference RMSNorm over rows of a dense (N, C) array, in double precision.</summary>
public static class RmsNormRef
{
    /// <summary>y = x * rstd * weight, rstd[n] = 1 / sqrt(mean(x[n]^2) + eps).</summary>
    public static void Forward(double[] x, double[] weight, int n, int c, double eps, double[] y, double[] rstd)
    {
        // x is (N, C); weight is (C); y is (N, C), written; rstd is (N), written
        for (int r = 0; r < n; r++)
        {
            double ms = 0;
            for (int j = 0; j < c; j++) ms += x[r * c + j] * x[r * c + j];
            ms /= c;
            rstd[r] = 1.0 / Math.Sqrt(ms + eps);
            for (int j = 0; j < c; j++) y[r * c + j] = x[r * c + j] * rstd[r] * weight[j];
        }
    }

    /// <summary>
    /// dx and dWeight (both overwritten) by the chain rule through y_j = x_j r w_j with
    /// r = (sum_k x_k^2 / C + eps)^(-1/2), so dr/dx_k = -r^3 x_k / C.
    /// </summary>
    public static void Backward(double[] dy, double[] x, double[] weight, int n, int c, double eps, double[] dx, double[] dWeight)
    {
        // dy is (N, C); x is (N, C); weight is (C); dx is (N, C), written; dWeight is (C), written
        Array.Clear(dWeight);
        for (int r = 0; r < n; r++)
        {
            double ms = 0;
            for (int j = 0; j < c; j++) ms += x[r * c + j] * x[r * c + j];
            double rs = 1.0 / Math.Sqrt(ms / c + eps);
            // dL/dr = sum_j dy_j x_j w_j
            double dr = 0;
            for (int j = 0; j < c; j++) dr += dy[r * c + j] * x[r * c + j] * weight[j];
            for (int k = 0; k < c; k++)
            {
                dx[r * c + k] = dy[r * c + k] * weight[k] * rs + dr * (-rs * rs * rs * x[r * c + k] / c);
                dWeight[k] += dy[r * c + k] * x[r * c + k] * rs;
            }
        }
    }
}
