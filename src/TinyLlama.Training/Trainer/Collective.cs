// The seam for data-parallel training: after each backward the trainer hands its gradients and
// token counts to a collective, which in a multi-process run averages them across ranks (an
// all-reduce). The single-process implementation does nothing; a future multi-process one plugs in here.
using TinyLlama.Tensors;

namespace TinyLlama.Training.Trainer;

/// <summary>Collective communication among data-parallel ranks.</summary>
public interface ICollective
{
    /// <summary>This process's index among WorldSize.</summary>
    int Rank { get; }

    /// <summary>Number of processes training together.</summary>
    int WorldSize { get; }

    /// <summary>Sums the values across ranks in place.</summary>
    void AllReduceSum(Span<double> values);

    /// <summary>Sums each gradient across ranks in place (the trainer has already divided by the global token count).</summary>
    void AllReduceGradients(IReadOnlyList<Tensor> gradients);
}

/// <summary>One process: every collective is the identity.</summary>
public sealed class SingleProcess : ICollective
{
    public static SingleProcess Instance { get; } = new();
    public int Rank => 0;
    public int WorldSize => 1;
    public void AllReduceSum(Span<double> values) { }
    public void AllReduceGradients(IReadOnlyList<Tensor> gradients) { }
}
