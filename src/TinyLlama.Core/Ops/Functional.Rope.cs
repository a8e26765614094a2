// Rotary position embedding (Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding",
// 2021) and its cos/sin tables. Pair i of a head at position p is rotated by the angle p * invFreq[i],
// with invFreq[i] = theta^(-2i/D) by default (LLaMA: theta = 10000; other models pass their own
// frequencies, e.g. scaled ones). Angles and their cos/sin are computed in f64 and rounded once to the
// table dtype, so tables do not drift at large positions. The rotation is orthogonal: the backward is the
// rotation by -angle (CpuBackend.Rope.cs, inverse = true); the naive definition is Ops/Reference/RopeRef.cs.
using TinyLlama.Autograd;
using TinyLlama.Backends;

namespace TinyLlama.Tensors;

public static partial class Functional
{
    /// <summary>LLaMA's default RoPE frequencies, invFreq[i] = theta^(-2i / headDim) for i &lt; headDim / 2, in f64.</summary>
    public static double[] RopeInverseFrequencies(int headDim, double theta = 10000.0)
    {
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"rope: the head size must be even and positive, got {headDim}");
        if (!(theta > 0) || double.IsInfinity(theta)) throw new ArgumentException($"rope: theta must be finite and positive, got {theta}");
        var invFreq = new double[headDim / 2];
        for (int i = 0; i < invFreq.Length; i++) invFreq[i] = Math.Pow(theta, -2.0 * i / headDim);
        return invFreq;
    }

    /// <summary>
    /// cos and sin tables [length, invFreq.Length] for positions start .. start + length - 1:
    /// angle[t, i] = (start + t) * invFreq[i], computed in f64 and rounded to <paramref name="dtype"/>.
    /// </summary>
    public static (Tensor Cos, Tensor Sin) RopeTables(double[] inverseFrequencies, int start, int length, DType dtype = DType.F32, Device? device = null)
    {
        if (inverseFrequencies.Length == 0) throw new ArgumentException("rope tables: no inverse frequencies given");
        if (start < 0 || length < 0) throw new ArgumentException($"rope tables: positions start at {start} for {length} positions; both must be non-negative");
        if (!dtype.IsFloat()) throw new ArgumentException($"rope tables: dtype must be floating-point, got {dtype.Name()}");
        int half = inverseFrequencies.Length;
        if ((long)length * half > int.MaxValue)
            throw new ArgumentException($"rope tables: {length} positions of {half} frequencies are more than the {int.MaxValue} elements a tensor may hold");
        // cos and sin are (T, D/2)
        var cos = new double[length * half];
        var sin = new double[length * half];
        for (int t = 0; t < length; t++)
            for (int i = 0; i < half; i++)
            {
                double angle = (double)(start + t) * inverseFrequencies[i];
                cos[t * half + i] = Math.Cos(angle);
                sin[t * half + i] = Math.Sin(angle);
            }
        return (Tensor.FromDoubles(cos, [length, half], dtype, device), Tensor.FromDoubles(sin, [length, half], dtype, device));
    }

    /// <summary>
    /// Rotary embedding of x [B, T, H, D] with tables cos, sin [T, D/2] (from <see cref="RopeTables"/>):
    /// each pair (x1, x2) becomes (x1 cos - x2 sin, x1 sin + x2 cos). <paramref name="layout"/> picks the
    /// pairs: (i, i + D/2) for Hugging Face checkpoints, (2i, 2i + 1) for Meta / llama2.c ones. The tables
    /// are constants (no gradient); they may have any float dtype and are converted to x's compute type.
    /// </summary>
    public static Tensor Rope(Tensor x, Tensor cos, Tensor sin, RopeLayout layout = RopeLayout.RotateHalf)
    {
        const string op = "rope";
        if (!x.DType.IsFloat() || !cos.DType.IsFloat() || !sin.DType.IsFloat())
            throw new ArgumentException($"{op}: expected floating-point tensors, got x {x.DType.Name()}, cos {cos.DType.Name()}, sin {sin.DType.Name()}");
        if (cos.Device != x.Device || sin.Device != x.Device)
            throw new ArgumentException($"{op}: x on {x.Device} but cos on {cos.Device} and sin on {sin.Device}");
        if (x.Rank != 4 || x.shape[3] % 2 != 0)
            throw new ArgumentException($"{op}: x must be [B, T, H, D] with D even, got {Shapes.Format(x.shape)}");
        int t = x.shape[1], half = x.shape[3] / 2;
        if (cos.Rank != 2 || cos.shape[0] != t || cos.shape[1] != half || !sin.shape.AsSpan().SequenceEqual(cos.shape))
            throw new ArgumentException($"{op}: x {Shapes.Format(x.shape)} needs cos and sin of shape [{t}, {half}], got {Shapes.Format(cos.shape)} and {Shapes.Format(sin.shape)}");
        var ct = FusedComputeType(x.DType);
        var c = cos.Detach().CastRaw(ct).Contiguous();
        var s = sin.Detach().CastRaw(ct).Contiguous();
        var y = Tensor.Zeros(x.shape, ct, x.Device);
        x.Backend.Rope(x.Detach().CastRaw(ct).Contiguous(), c, s, layout, inverse: false, y);
        return Engine.Record(y.CastRaw(x.DType), "RopeBackward", [x], g =>
        {
            // The rotation is orthogonal, so the gradient is rotated back: dx = R(-theta) dy.
            var dx = Tensor.Zeros(x.shape, ct, g.Device);
            g.Backend.Rope(g.CastRaw(ct).Contiguous(), c, s, layout, inverse: true, dx);
            return [dx.CastRaw(x.DType)];
        });
    }
}
