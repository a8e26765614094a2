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
        double sum = 0;
        foreach (var acc in SumsOfSquares(parameters).Values) sum += acc.Item(); // the host reads one value per device
        return Math.Sqrt(sum);
    }

    /// <summary>
    /// The global L2 norm as a one-element f64 tensor, left on the device that computed it when every gradient
    /// is on one device (no host read; the trainer reads it with the loss at the end of the step), otherwise
    /// read on the host and returned as a CPU tensor. Gradients are not changed.
    /// </summary>
    public static Tensor GlobalNormOnDevice(IEnumerable<Tensor> parameters)
    {
        var sums = SumsOfSquares(parameters);
        if (sums.Count == 1)
        {
            using var _ = GradMode.NoGrad();
            return sums.Values.First().Sqrt();
        }
        return Tensor.Full([1], Math.Sqrt(sums.Values.Sum(acc => acc.Item())), DType.F64);
    }

    /// <summary>Scales the gradients so their global norm is at most maxNorm; returns the norm before clipping.</summary>
    public static double ClipGradNorm(IEnumerable<Tensor> parameters, double maxNorm) =>
        ClipGradNormOnDevice(parameters, maxNorm).Item();

    // The norm read to the host, the gradients scaled only when the clip factor is below 1.
    private static double ClipOnHost(List<Tensor> parameters, Dictionary<Device, Tensor> sums, double maxNorm)
    {
        double norm = Math.Sqrt(sums.Values.Sum(acc => acc.Item()));
        double coef = maxNorm / (norm + 1e-6);
        if (coef < 1 && double.IsFinite(norm))
        {
            using var _ = GradMode.NoGrad();
            foreach (var p in parameters) p.Grad?.Mul_(coef);
        }
        return norm;
    }

    /// <summary>
    /// As <see cref="ClipGradNorm"/> without reading the norm. Gradients on one accelerator are handled as
    /// PyTorch's clip_grad_norm_ does on a GPU: the norm stays a one-element f64 tensor on that device and
    /// the gradients are scaled by min(1, maxNorm / (norm + 1e-6)) there (by 1 when the norm is not
    /// finite). Gradients in host memory (where reading costs nothing) or on several devices take the host
    /// path: the norm is read, the gradients scaled only when the factor is below 1, and the norm returned
    /// as a CPU tensor.
    /// </summary>
    public static Tensor ClipGradNormOnDevice(IEnumerable<Tensor> parameters, double maxNorm)
    {
        var list = parameters.ToList();
        var sums = SumsOfSquares(list);
        if (sums.Count == 1 && sums.Keys.First() != Device.Cpu) return ClipOnDevice(list, sums.Values.First(), maxNorm);
        return Tensor.Full([1], ClipOnHost(list, sums, maxNorm), DType.F64);
    }

    private static Tensor ClipOnDevice(List<Tensor> parameters, Tensor sumOfSquares, double maxNorm)
    {
        using var _ = GradMode.NoGrad();
        var norm = sumOfSquares.Sqrt();                       // [1] f64
        var coef = maxNorm / (norm + 1e-6);
        var keep = coef.Lt(1.0) * norm.Lt(double.PositiveInfinity); // 0 for NaN and inf norms
        coef = Tensor.Where(keep, coef, Tensor.Ones([1], DType.F64, norm.Device));
        foreach (var p in parameters)
            p.Grad?.Mul_(p.Grad.DType == DType.F64 ? coef : coef.To(p.Grad.DType.IsHalf() ? DType.F32 : p.Grad.DType));
        return norm;
    }

    // sum of ||g||^2 per device, accumulated on the device in f64.
    private static Dictionary<Device, Tensor> SumsOfSquares(IEnumerable<Tensor> parameters)
    {
        using var _ = GradMode.NoGrad();
        var sums = new Dictionary<Device, Tensor>();
        foreach (var p in parameters)
        {
            if (p.Grad is null) continue;
            var g = p.Grad.DType is DType.F64 or DType.F32 ? p.Grad : p.Grad.To(DType.F32);
            if (!sums.TryGetValue(g.Device, out var acc)) sums[g.Device] = acc = Tensor.Zeros([1], DType.F64, g.Device);
            g.Backend.SumOfSquares(g, acc);
        }
        return sums;
    }
}
