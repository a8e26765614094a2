// Autocast: matmuls in bf16/f16 with f32 accumulation, f32 master parameters receiving f32 gradients,
// and type promotion for mixed-dtype elementwise ops.
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Training;

public class MixedPrecisionTests
{
    [Fact]
    public void ElementwiseOpsPromoteLikePyTorch()
    {
        var a = Tensor.FromArray(new float[] { 1.5f, 2f }).To(DType.BF16);
        var b = Tensor.FromArray(new float[] { 0.25f, 0.5f });
        Assert.Equal(DType.F32, (a + b).DType);
        Assert.Equal(DType.F32, (a.To(DType.F16) * a).DType);
        Assert.Equal(DType.F64, (b + b.To(DType.F64)).DType);
        Assert.Throws<ArgumentException>(() => b + Tensor.FromArray(new[] { 1, 2 }));
        var p = b.Detach().Clone().RequiresGrad_();
        var q = a.Detach().Clone().RequiresGrad_();
        (p * q).Sum().Backward();
        Assert.Equal(DType.F32, p.Grad!.DType);
        Assert.Equal(DType.BF16, q.Grad!.DType);
        Assert.Equal(new float[] { 1.5f, 2f }, p.Grad.ToArray<float>());
    }

    [Theory]
    [InlineData(DType.BF16, 2e-2)]
    [InlineData(DType.F16, 2e-3)]
    public void AutocastLossAndGradientsStayCloseToF32(DType half, double tolerance)
    {
        // Tolerance: the inputs of each matmul are rounded to 8 (bf16) or 11 (f16) significant bits, so
        // relative errors of a few times 2^-8 or 2^-11 are expected in the loss and gradients.
        var cfg = Tests.Model.LlamaTests.Tiny();
        var ids = Tensor.FromArray(new[] { 1, 4, 7, 2, 9, 3, 8, 8 }, [1, 8]);
        var targets = Tensor.FromArray(new[] { 4, 7, 2, 9, 3, 8, 8, 1 }, [1, 8]);
        (double Loss, float[] Grad, DType GradType) Run(DType? autocast)
        {
            var model = new LlamaForCausalLM(cfg, new Generator(9));
            Tensor loss;
            using (autocast is DType d ? Autocast.Enable(d) : default(Autocast.Scope?))
                loss = Functional.CrossEntropy(model.Forward(ids), targets);
            loss.Backward();
            var w = model.Model.Layers[0].Mlp.UpProj.Weight;
            return (loss.Item(), w.Grad!.ToArray<float>(), w.Grad.DType);
        }
        var full = Run(null);
        var mixed = Run(half);
        Assert.Equal(DType.F32, mixed.GradType);
        Assert.True(Math.Abs(full.Loss - mixed.Loss) <= tolerance * full.Loss, $"loss {mixed.Loss} vs {full.Loss}");
        double norm = Math.Sqrt(full.Grad.Sum(g => (double)g * g));
        double diff = Math.Sqrt(full.Grad.Zip(mixed.Grad).Sum(p => (double)(p.First - p.Second) * (p.First - p.Second)));
        Assert.True(diff <= 5 * tolerance * norm, $"gradient difference {diff} vs norm {norm}");
        Assert.NotEqual(full.Loss, mixed.Loss); // autocast really changed the arithmetic
    }
}

public class HalfLossTests
{
    [Fact]
    public void CrossEntropyOfHalfLogitsIsComputedAndReturnedInF32()
    {
        var logits = Tensor.RandN([3, 7], new Generator(1)).To(DType.BF16).RequiresGrad_();
        var targets = Tensor.FromArray(new[] { 1, 5, 6 });
        var loss = Functional.CrossEntropy(logits, targets);
        Assert.Equal(DType.F32, loss.DType);
        var reference = Functional.CrossEntropy(logits.Detach().To(DType.F32), targets).Item();
        Assert.Equal(reference, loss.Item(), 6);
        loss.Backward();
        Assert.Equal(DType.BF16, logits.Grad!.DType);
    }
}
