// The seam for data-parallel training: after each backward the trainer hands its gradients and
// token counts to a collective, which in a multi-process run sums them across ranks (an all-reduce; the
// trainer has already divided by the global token count, so the sum is the mean gradient of the global batch).
// The single-process implementation does nothing. MpiCollective (Distributed/, over Open MPI) is the
// multi-process one; NcclCollective sums device buffers on GPUs. The float-buffer members are what the
// bucketed, backward-overlapped reduction (Distributed/GradientBuckets.cs) and ZeRO stage 1
// (Distributed/ZeroAdamW.cs) need; their defaults serve one process.
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

    /// <summary>
    /// Starts summing <paramref name="values"/>[offset..offset+count] across ranks in place and returns at once;
    /// the task completes when the sum is in the buffer, which must not be touched before. Every rank must start
    /// the same reductions in the same order.
    /// </summary>
    Task AllReduceSumAsync(float[] values, int offset, int count)
    {
        if (WorldSize != 1) throw new NotSupportedException($"{GetType().Name} does not reduce float buffers");
        return Task.CompletedTask;
    }

    /// <summary>Waits for a reduction started by <see cref="AllReduceSumAsync"/> (an implementation may progress it faster once waited for).</summary>
    void Wait(Task reduction) => reduction.GetAwaiter().GetResult();

    /// <summary>Every rank's <paramref name="mine"/> (all of one length n), rank r's at [r * n, (r + 1) * n) of <paramref name="all"/>.</summary>
    void AllGather(ReadOnlySpan<byte> mine, Span<byte> all)
    {
        if (WorldSize != 1) throw new NotSupportedException($"{GetType().Name} does not all-gather");
        mine.CopyTo(all);
    }

    /// <summary>Every rank's <paramref name="mine"/> (all of one length n), rank r's at [r * n, (r + 1) * n) of <paramref name="all"/>.</summary>
    void AllGather(ReadOnlySpan<float> mine, Span<float> all) =>
        AllGather(System.Runtime.InteropServices.MemoryMarshal.AsBytes(mine), System.Runtime.InteropServices.MemoryMarshal.AsBytes(all));

    /// <summary>Replaces <paramref name="values"/> on every rank with rank <paramref name="root"/>'s.</summary>
    void Broadcast(Span<byte> values, int root)
    {
        if (WorldSize != 1) throw new NotSupportedException($"{GetType().Name} does not broadcast");
    }

    /// <summary>Returns when every rank has called it.</summary>
    void Barrier() { }
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
