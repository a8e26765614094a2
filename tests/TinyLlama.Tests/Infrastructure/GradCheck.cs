// Central finite differences in f64 against the analytic backward.
// The scalar checked is L = sum(f(x) * u) with a random upstream gradient u (not a plain Sum(), which
// would hide errors that cancel across outputs), so dL/dx from Backward(u) must equal
// (L(x + h e_j) - L(x - h e_j)) / 2h for every element j of every input.
using TinyLlama.Autograd;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Infrastructure;

public static class GradCheck
{
    /// <summary>
    /// Checks the gradients of f with respect to each input (f64 tensors; they are copied into fresh
    /// leaves). f may view its inputs in any way (permute, slice, expand) to test non-contiguous paths.
    /// Tolerance: |analytic - numeric| &lt;= atol + rtol * |numeric|.
    /// </summary>
    public static void Check(Func<Tensor[], Tensor> f, Tensor[] inputs, double atol = 1e-6, double rtol = 1e-5, double h = 1e-6, ulong seed = 7)
    {
        foreach (var t in inputs)
            Assert.True(t.DType == DType.F64, "gradient checks run in f64");
        var leaves = inputs.Select(t => t.Detach().Clone().RequiresGrad_()).ToArray();
        var y = f(leaves);
        var u = Tensor.RandN(y.Shape, new Generator(seed), DType.F64);
        y.Backward(u);
        var uData = u.ToArray<double>();

        var data = inputs.Select(t => t.ToArray<double>()).ToArray();
        double Loss()
        {
            using var _ = GradMode.NoGrad();
            var xs = data.Select((d, i) => Tensor.FromArray(d, inputs[i].Shape)).ToArray();
            var out_ = f(xs).ToArray<double>();
            double s = 0;
            for (int i = 0; i < out_.Length; i++) s += out_[i] * uData[i];
            return s;
        }

        for (int i = 0; i < inputs.Length; i++)
        {
            var grad = leaves[i].Grad;
            Assert.True(grad is not null, $"input {i} received no gradient");
            var analytic = grad!.ToArray<double>();
            Assert.Equal(inputs[i].Shape, grad.Shape);
            for (int j = 0; j < data[i].Length; j++)
            {
                double orig = data[i][j];
                data[i][j] = orig + h;
                double lp = Loss();
                data[i][j] = orig - h;
                double lm = Loss();
                data[i][j] = orig;
                double numeric = (lp - lm) / (2 * h);
                double err = Math.Abs(analytic[j] - numeric);
                Assert.True(err <= atol + rtol * Math.Abs(numeric),
                    $"input {i} element {j}: analytic {analytic[j]:G10} vs numeric {numeric:G10} (error {err:G3})");
            }
        }
    }

    /// <summary>A seeded f64 normal tensor.</summary>
    public static Tensor RandN(ulong seed, params int[] shape) => Tensor.RandN(shape, new Generator(seed), DType.F64);
}
