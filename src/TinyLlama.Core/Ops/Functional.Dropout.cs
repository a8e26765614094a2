// Dropout (Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
// JMLR 2014), in the "inverted" form PyTorch uses (torch.nn.functional.dropout): during training each
// element is kept with probability 1 - p and scaled by 1 / (1 - p), so that E[y] = x and evaluation
// needs no rescaling; in evaluation the op is the identity.
//
//   mask[i] = (u[i] >= p) ? 1 / (1 - p) : 0,   u[i] ~ U[0, 1) from the seeded Generator, row-major order
//   y       = x * mask
//   dx      = dy * mask                         (the same mask: it is saved by the forward)
//
// The mask is drawn on the host from the caller's Generator, one uniform per element in row-major
// order, so the same seed gives the same mask on every machine and every backend, and a rewound
// generator (activation checkpointing) reproduces it exactly.
using TinyLlama.Autograd;
using TinyLlama.Backends;

namespace TinyLlama.Tensors;

public static partial class Functional
{
    /// <summary>
    /// Inverted dropout: in training, zeroes each element of <paramref name="x"/> with probability
    /// <paramref name="p"/> and scales the survivors by 1 / (1 - p); returns <paramref name="x"/> itself
    /// when <paramref name="training"/> is false or p is 0. The mask comes from <paramref name="generator"/>
    /// (one uniform draw per element, row-major), and the backward multiplies by that same mask.
    /// 16-bit inputs are computed in f32 and rounded back.
    /// </summary>
    /// <param name="x">Any shape, floating point.</param>
    /// <param name="p">Probability of zeroing an element, in [0, 1).</param>
    /// <param name="training">False in evaluation (identity).</param>
    /// <param name="generator">The seeded source of the mask.</param>
    public static Tensor Dropout(Tensor x, double p, bool training, Generator generator)
    {
        const string op = "dropout";
        // p = 1 would keep nothing and scale by infinity; PyTorch returns zeros there, but no use of
        // dropout in this project needs it, so it is rejected rather than special-cased.
        if (!(p >= 0 && p < 1)) throw new ArgumentOutOfRangeException(nameof(p), p, $"{op}: probability must be in [0, 1), got {p}");
        ArgumentNullException.ThrowIfNull(generator);
        CheckFloatInputs(op, x);
        if (!training || p == 0) return x;

        var ct = FusedComputeType(x.DType);
        var mask = DropoutMask(x.shape, p, generator, ct, x.Device); // same shape as x, dense, values 0 or 1/(1-p)
        var y = Tensor.BinaryRaw(BinaryOp.Mul, x.Detach().CastRaw(ct), mask).CastRaw(x.DType);
        return Engine.Record(y, "DropoutBackward", [x], dy => [DropoutBackward(dy, mask)]);
    }

    /// <summary>
    /// The scaled keep-mask of <see cref="Dropout"/>: 1 / (1 - p) where a uniform draw is at least p,
    /// 0 elsewhere, drawn in row-major order. Exposed so tests can check the statistics.
    /// </summary>
    internal static Tensor DropoutMask(int[] shape, double p, Generator generator, DType dtype, Device device)
    {
        int n = Shapes.Numel(shape);
        double scale = 1.0 / (1.0 - p);
        if (dtype == DType.F32)
        {
            // The common case, built directly in f32 (half the host memory of a double staging array).
            var f = new float[n];
            float fs = (float)scale;
            for (int i = 0; i < n; i++) f[i] = generator.NextDouble() >= p ? fs : 0f;
            return Tensor.FromArray(f, shape, device);
        }
        var values = new double[n];
        for (int i = 0; i < n; i++) values[i] = generator.NextDouble() >= p ? scale : 0.0;
        return Tensor.FromDoubles(values, shape, dtype, device);
    }

    /// <summary>dx = dy * mask, computed in the mask's dtype and returned in dy's.</summary>
    internal static Tensor DropoutBackward(Tensor dy, Tensor mask) =>
        Tensor.BinaryRaw(BinaryOp.Mul, dy.CastRaw(mask.DType), mask).CastRaw(dy.DType);
}
