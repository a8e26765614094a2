// Naive LoRA linear: the definition the fused paths (Ops/Functional.Lora.cs, CpuBackend.Lora.cs, the
// ILGPU LoraAdd kernel) are tested against. Math: Hu et al., "LoRA: Low-Rank Adaptation of Large
// Language Models", 2021, eq. 3, with PEFT's dropout on the adapter's input only:
//   y = x W^T + s (xd A^T) B^T,  xd = dropout(x) (= x without dropout),  s = alpha / r.
namespace TinyLlama.Ops.Reference;

/// <summary>Reference LoRA linear over dense row-major arrays, in double precision.</summary>
public static class LoraRef
{
    /// <summary>y [N, out] = x W^T + s (xd A^T) B^T, written.</summary>
    public static void Forward(double[] x, double[] xd, double[] w, double[] a, double[] b, double s, int n, int inF, int outF, int r, double[] y)
    {
        // x, xd are (N, in); w is (out, in); a is (r, in); b is (out, r); y is (N, out)
        for (int i = 0; i < n; i++)
            for (int o = 0; o < outF; o++)
            {
                double acc = 0;
                for (int k = 0; k < inF; k++) acc += x[i * inF + k] * w[o * inF + k];
                for (int j = 0; j < r; j++)
                {
                    double u = 0;
                    for (int k = 0; k < inF; k++) u += xd[i * inF + k] * a[j * inF + k];
                    acc += s * u * b[o * r + j];
                }
                y[i * outF + o] = acc;
            }
    }
}
