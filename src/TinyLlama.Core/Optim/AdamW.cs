// AdamW (Loshchilov and Hutter, "Decoupled Weight Decay Regularization", 2019), as torch.optim.AdamW:
//   p <- p - lr * wd * p
//   m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
//   p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
using TinyLlama.Autograd;
using TinyLlama.Tensors;

namespace TinyLlama.Optim;

/// <summary>Adam with decoupled weight decay; state kept in f32 (or f64 for f64 parameters).</summary>
public sealed class AdamW
{
    private readonly List<Tensor> parameters;
    private readonly Tensor?[] m, v;

    public AdamW(IEnumerable<Tensor> parameters, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weightDecay = 0.01)
    {
        this.parameters = parameters.Where(p => p.RequiresGrad).ToList();
        m = new Tensor?[this.parameters.Count];
        v = new Tensor?[this.parameters.Count];
        Lr = lr;
        Beta1 = beta1;
        Beta2 = beta2;
        Eps = eps;
        WeightDecay = weightDecay;
    }

    /// <summary>Learning rate (schedules set it before each step).</summary>
    public double Lr { get; set; }
    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }
    public double WeightDecay { get; set; }

    /// <summary>Number of steps taken (t in the bias corrections).</summary>
    public int StepCount { get; private set; }

    /// <summary>The optimised parameters, in order.</summary>
    public IReadOnlyList<Tensor> Params => parameters;

    /// <summary>First and second moments of parameter i (null before its first update).</summary>
    public (Tensor? M, Tensor? V) State(int i) => (m[i], v[i]);

    /// <summary>Restores moments and the step count (checkpoint resume).</summary>
    public void SetState(int step, IReadOnlyList<Tensor?> moments1, IReadOnlyList<Tensor?> moments2)
    {
        if (moments1.Count != parameters.Count || moments2.Count != parameters.Count)
            throw new ArgumentException($"optimizer state has {moments1.Count} entries for {parameters.Count} parameters");
        StepCount = step;
        for (int i = 0; i < parameters.Count; i++) { m[i] = moments1[i]; v[i] = moments2[i]; }
    }

    /// <summary>One update of every parameter that has a gradient.</summary>
    public void Step()
    {
        using var _ = GradMode.NoGrad();
        StepCount++;
        double bc1 = 1 - Math.Pow(Beta1, StepCount);
        double bc2 = 1 - Math.Pow(Beta2, StepCount);
        for (int i = 0; i < parameters.Count; i++)
        {
            var p = parameters[i];
            if (p.Grad is null) continue;
            var stateType = p.DType == DType.F64 ? DType.F64 : DType.F32;
            if (p.DType == stateType && p.IsContiguous && p.Grad.DType == stateType && p.Grad.IsContiguous && p.Grad.Device == p.Device)
            {
                // The fused backend update: one pass over p, g, m, v (see IBackend.AdamWStep).
                CreateState(i, stateType);
                p.Backend.AdamWStep(p, p.Grad, m[i]!, v[i]!, Lr, Beta1, Beta2, Eps, WeightDecay, StepCount);
                continue;
            }
            // Other layouts (16-bit parameters, strided views): the same update as tensor ops.
            var g = p.Grad.To(stateType);
            CreateState(i, stateType);
            m[i]!.Mul_(Beta1).Add_(g * (1 - Beta1));
            v[i]!.Mul_(Beta2).Add_(g * g * (1 - Beta2));
            var master = p.To(stateType);
            if (WeightDecay != 0) master = master * (1 - Lr * WeightDecay);
            var update = m[i]! / bc1 / ((v[i]! / bc2).Sqrt() + Eps) * Lr;
            p.CopyFrom_(master - update);
        }
    }

    // The moments of parameter i, zero, on its first update. They live as long as the optimizer, so no
    // dispose scope open around the step (a trainer's per-step scope) may record them.
    private void CreateState(int i, DType stateType)
    {
        if (m[i] is not null && v[i] is not null) return;
        var p = parameters[i];
        using var _ = DisposeScope.Untracked();
        m[i] ??= Tensor.Zeros(p.Shape, stateType, p.Device);
        v[i] ??= Tensor.Zeros(p.Shape, stateType, p.Device);
    }

    /// <summary>Clears the gradients of the optimised parameters.</summary>
    public void ZeroGrad()
    {
        foreach (var p in parameters) p.ZeroGrad();
    }
}
