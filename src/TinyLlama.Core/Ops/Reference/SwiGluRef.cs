// Naive SwiGLU: the definition the fast paths (Backends/Cpu/CpuBackend.SwiGlu.cs) are tested against.
// Math: Shazeer, "GLU Variants Improve Transformer", 2020: y = silu(gate) * up, silu(g) = g / (1 + e^-g).
namespace TinyLlama.Ops.Reference;

/// <summary>Reference SwiGLU over dense arrays of one length, in double precision.</summary>
public static class SwiGluRef
{
    private static double Sigmoid(double g) => 1.0 / (1.0 + Math.Exp(-g));

    /// <summary>y[i] = gate[i] * sigmoid(gate[i]) * up[i].</summary>
    public static void Forward(double[] gate, double[] up, double[] y)
    {
        // gate is (N); up is (N); y is (N), written
        for (int i = 0; i < y.Length; i++) y[i] = gate[i] * Sigmoid(gate[i]) * up[i];
    }

    /// <summary>
    /// dGate = dy * up * (s + g s (1 - s)) (product rule on g * s(g), with s' = s (1 - s)) and
    /// dUp = dy * g s; both overwritten.
    /// </summary>
    public static void Backward(double[] gate, double[] up, double[] dy, double[] dGate, double[] dUp)
    {
        // gate is (N); up is (N); dy is (N); dGate is (N), written; dUp is (N), written
        for (int i = 0; i < dy.Length; i++)
        {
            double s = Sigmoid(gate[i]);
            dGate[i] = dy[i] * up[i] * (s + gate[i] * s * (1 - s));
            dUp[i] = dy[i] * gate[i] * s;
        }
    }
}
