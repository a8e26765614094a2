// Gradient clipping by global norm (Pascanu et al., 2013), as torch.nn.utils.clip_grad_norm_:
// total = sqrt(sum over all parameters of ||g||^2); if total > max, every gradient is scaled by
// max / (total + 1e-6).
using TinyLlama.Autograd;
using TinyLlama.Tensors;

namespace TinyLlama.Optim;

/// <summary>Global-norm gradient utilities.</summary>
public static class GradClip
{
    /// <summary>The global L2 norm of the gradients (parameters without a gradient count as zero).</summary>
    public static double GlobalNorm(IEnumerable<Tensor> parameters)
    {
        using var _ = GradMode.NoGrad();
        // One accumulator per device, summed on the device; the host reads one value per device.
        var sums = new Dictionary<Device, Tensor>();
        foreach (var p in parameters)
        {
            if (p.Grad is null) continue;
            var g = p.Grad.DType is DType.F64 or DType.F32 ? p.Grad : p.Grad.To(DType.F32);
            if (!sums.TryGetValue(g.Device, out var acc)) sums[g.Device] = acc = Tensor.Zeros([1], DType.F64, g.Device);
            g.Backend.SumOfSquares(g, acc);
        }
        double sum = 0;
        foreach (var acc in sums.Values) sum += acc.Item();
        return Math.Sqrt(sum);
    }

    /// <summary>Scales the gradients so their global norm is at most maxNorm; returns the norm before clipping.</summary>
    public static double ClipGradNorm(IEnumerable<Tensor> parameters, double maxNorm)
    {
        var list = parameters.ToList();
        double norm = GlobalNorm(list);
        double coef = maxNorm / (norm + 1e-6);
        if (coef < 1 && double.IsFinite(norm))
        {
            using var _ = GradMode.NoGrad();
            foreach (var p in list) p.Grad?.Mul_(coef);
        }
        return norm;
    }
}
