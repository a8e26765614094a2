// AdamW against a scalar re-implementation of torch.optim.AdamW, schedules against HF's formulas,
// clipping against the global norm, and activation checkpointing against the plain backward.
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Tensors;

namespace TinyLlama.Tests.Training;

public class OptimTests
{
    [Fact]
    public void AdamWMatchesScalarReference()
    {
        var p = Tensor.FromArray(new double[] { 0.5, -1.0, 2.0 }).RequiresGrad_();
        var opt = new AdamW([p], lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.05);
        double[] x = [0.5, -1.0, 2.0], m = new double[3], v = new double[3];
        for (int t = 1; t <= 4; t++)
        {
            p.ZeroGrad();
            (p * p * p).Sum().Backward();        // g = 3 p^2
            opt.Step();
            for (int i = 0; i < 3; i++)
            {
                double g = 3 * x[i] * x[i];
                x[i] -= 0.1 * 0.05 * x[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.99 * v[i] + 0.01 * g * g;
                double mh = m[i] / (1 - Math.Pow(0.9, t)), vh = v[i] / (1 - Math.Pow(0.99, t));
                x[i] -= 0.1 * mh / (Math.Sqrt(vh) + 1e-8);
            }
            var got = p.ToArray<double>();
            for (int i = 0; i < 3; i++) Assert.Equal(x[i], got[i], 12);
        }
        Assert.Equal(4, opt.StepCount);
    }

    [Fact]
    public void SchedulesFollowTheHuggingFaceFormulas()
    {
        var cos = new LrSchedule(LrScheduleKind.Cosine, 1.0, 10, 110);
        Assert.Equal(0.0, cos.At(0));
        Assert.Equal(0.5, cos.At(5), 12);
        Assert.Equal(1.0, cos.At(10), 12);
        Assert.Equal(0.5, cos.At(60), 12);
        Assert.Equal(0.5 * (1 + Math.Cos(Math.PI * 0.25)), cos.At(35), 12);
        Assert.Equal(0.0, cos.At(110), 12);
        var constant = new LrSchedule(LrScheduleKind.Constant, 3e-4, 4, 100);
        Assert.Equal(1.5e-4, constant.At(2), 15);
        Assert.Equal(3e-4, constant.At(50), 15);
    }

    [Fact]
    public void ClipGradNormScalesToTheMaximum()
    {
        var a = Tensor.FromArray(new double[] { 3, 0 }).RequiresGrad_();
        var b = Tensor.FromArray(new double[] { 4 }).RequiresGrad_();
        ((a * a).Sum() * 0.5 + (b * b).Sum() * 0.5).Backward(); // grads = (3, 0) and (4): norm 5
        double norm = GradClip.ClipGradNorm([a, b], 1.0);
        Assert.Equal(5.0, norm, 12);
        Assert.Equal(1.0, GradClip.GlobalNorm([a, b]), 5);
        Assert.Equal(0.6, a.Grad!.ToArray<double>()[0], 5);
        // Below the maximum nothing changes.
        Assert.Equal(1.0, GradClip.ClipGradNorm([a, b], 10.0), 5);
        Assert.Equal(0.6, a.Grad!.ToArray<double>()[0], 5);
    }

    [Fact]
    public void ActivationCheckpointingGivesTheSameGradients()
    {
        var cfg = Tests.Model.LlamaTests.Tiny();
        var ids = Tensor.FromArray(new[] { 1, 4, 7, 2, 9, 3 }, [1, 6]);
        var targets = Tensor.FromArray(new[] { 4, 7, 2, 9, 3, 10 }, [1, 6]);
        Dictionary<string, double[]> Grads(bool checkpointing)
        {
            var model = new LlamaForCausalLM(cfg, new Generator(5), DType.F64) { GradientCheckpointing = checkpointing };
            Functional.CrossEntropy(model.Forward(ids), targets).Backward();
            return model.NamedParameters().ToDictionary(p => p.Name, p => p.Value.Grad!.ToArray<double>());
        }
        var plain = Grads(false);
        var recomputed = Grads(true);
        foreach (var (name, g) in plain)
            for (int i = 0; i < g.Length; i++) Assert.Equal(g[i], recomputed[name][i], 12);
    }
}
