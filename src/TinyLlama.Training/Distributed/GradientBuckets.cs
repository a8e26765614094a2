// Bucketed gradient all-reduce overlapped with the backward pass, as PyTorch's DistributedDataParallel does
// it (Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020, 3.2):
//
//   - the f32 parameters are grouped, in REVERSE order (the order backward produces their gradients: the
//     last layers first), into buckets of about bucketBytes (4 MB by default, --bucket-mb);
//   - a post-accumulate-grad hook on each parameter (Tensor.RegisterPostAccumulateGradHook) marks its gradient
//     final; when every gradient of a bucket is final, the gradients are copied into the bucket's flat
//     buffer and its all-reduce is queued on the communication thread while backward goes on;
//   - buckets are launched strictly in order (bucket k+1 waits for bucket k), so every rank issues the same
//     collectives in the same order even if a gradient is late on one rank;
//   - after backward, Finish launches what is left (a parameter that got no gradient contributes zeros, as
//     DDP's find_unused_parameters does), waits for every bucket and copies the sums back into the gradients.
// With gradient accumulation only the last micro-batch's backward is armed (DDP's no_sync for the others).
// Gradients of other dtypes (f64 test models) are summed in f64 after backward, one tensor at a time.
using System.Diagnostics;
using TinyLlama.Autograd;
using TinyLlama.Tensors;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Training.Distributed;

/// <summary>The gradients of a list of parameters, reduced across ranks in buckets as backward produces them.</summary>
internal sealed class GradientBuckets : IDisposable
{
    private sealed class Bucket(int[] members, int[] offsets, int count)
    {
        public int[] Members { get; } = members;   // parameter indices, in launch (reverse) order
        public int[] Offsets { get; } = offsets;   // each member's start in Buffer
        public float[] Buffer { get; } = new float[count];
        public int Pending;
        public Task? Reduction;
    }

    private readonly ICollective collective;
    private readonly IReadOnlyList<Tensor> parameters;
    private readonly Bucket[] buckets;
    private readonly int[] bucketOf;          // -1 for parameters reduced in f64 after backward
    private readonly bool[] ready;
    private readonly List<IDisposable> hooks = [];
    private int nextToLaunch;
    private bool armed;

    /// <summary>Buckets of about <paramref name="bucketBytes"/> over <paramref name="parameters"/>; hooks registered on each f32 one.</summary>
    public GradientBuckets(ICollective collective, IReadOnlyList<Tensor> parameters, long bucketBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bucketBytes, 1);
        this.collective = collective;
        this.parameters = parameters;
        bucketOf = new int[parameters.Count];
        ready = new bool[parameters.Count];
        var list = new List<Bucket>();
        var members = new List<int>();
        var offsets = new List<int>();
        long count = 0;
        void Close()
        {
            if (members.Count == 0) return;
            list.Add(new Bucket([.. members], [.. offsets], (int)count));
            members.Clear();
            offsets.Clear();
            count = 0;
        }
        for (int i = parameters.Count - 1; i >= 0; i--)
        {
            var p = parameters[i];
            if (p.DType != DType.F32) { bucketOf[i] = -1; continue; }
            if (count > 0 && (count + p.Numel) * sizeof(float) > bucketBytes) Close();
            bucketOf[i] = list.Count;
            members.Add(i);
            offsets.Add((int)count);
            count += p.Numel;
            if (count * sizeof(float) >= bucketBytes) Close();
            int index = i;
            hooks.Add(p.RegisterPostAccumulateGradHook(_ => OnReady(index)));
        }
        Close();
        buckets = [.. list];
    }

    /// <summary>Number of buckets.</summary>
    public int Count => buckets.Length;

    /// <summary>Bytes all-reduced per step (f32 gradients in buckets, others as f64).</summary>
    public long BytesPerStep
    {
        get
        {
            long bytes = 0;
            foreach (var b in buckets) bytes += (long)b.Buffer.Length * sizeof(float);
            for (int i = 0; i < parameters.Count; i++) if (bucketOf[i] < 0) bytes += (long)parameters[i].Numel * sizeof(double);
            return bytes;
        }
    }

    /// <summary>The next backward pass launches each bucket as soon as its gradients are final.</summary>
    public void Arm()
    {
        Array.Clear(ready);
        foreach (var b in buckets) { b.Pending = b.Members.Length; b.Reduction = null; }
        nextToLaunch = 0;
        armed = true;
    }

    /// <summary>
    /// Launches the buckets not yet launched, waits for all and writes the sums into the gradients (creating
    /// zero gradients where a parameter got none). Returns the seconds spent waiting for communication after
    /// backward: the part of the all-reduce the backward pass did not hide.
    /// </summary>
    public double Finish()
    {
        if (!armed) Arm();
        armed = false;
        while (nextToLaunch < buckets.Length) Launch(buckets[nextToLaunch++]);
        long t0 = Stopwatch.GetTimestamp();
        foreach (var b in buckets) collective.Wait(b.Reduction!);
        double waited = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        using (GradMode.NoGrad())
        {
            foreach (var b in buckets)
                for (int j = 0; j < b.Members.Length; j++)
                    HostCopy.Write(b.Buffer.AsSpan(b.Offsets[j], parameters[b.Members[j]].Numel), parameters[b.Members[j]].Grad!);
            for (int i = 0; i < parameters.Count; i++)
                if (bucketOf[i] < 0) ReduceInDouble(collective, parameters[i].Grad ??= Tensor.ZerosLike(parameters[i]));
        }
        return waited;
    }

    /// <summary>Sums <paramref name="gradients"/> across ranks after backward: the f32 ones through one flat buffer, others in f64.</summary>
    public static void ReduceAll(ICollective collective, IReadOnlyList<Tensor> gradients)
    {
        long total = 0;
        foreach (var g in gradients) if (g.DType == DType.F32) total += g.Numel;
        if (total > Array.MaxLength) throw new NotSupportedException($"all-reduce: {total} f32 gradient values do not fit one buffer");
        var buffer = new float[total];
        int at = 0;
        foreach (var g in gradients) if (g.DType == DType.F32) { HostCopy.Read(g, buffer.AsSpan(at, g.Numel)); at += g.Numel; }
        collective.Wait(collective.AllReduceSumAsync(buffer, 0, buffer.Length));
        at = 0;
        using var _ = GradMode.NoGrad();
        foreach (var g in gradients)
        {
            if (g.DType == DType.F32) { HostCopy.Write(buffer.AsSpan(at, g.Numel), g); at += g.Numel; }
            else ReduceInDouble(collective, g);
        }
    }

    public void Dispose()
    {
        foreach (var h in hooks) h.Dispose();
        hooks.Clear();
    }

    private static void ReduceInDouble(ICollective collective, Tensor g)
    {
        var values = g.ToArray<double>();
        collective.AllReduceSum(values);
        g.CopyFrom_(Tensor.FromArray(values, g.Shape, g.Device).To(g.DType));
    }

    private void OnReady(int i)
    {
        if (!armed) return;
        var b = buckets[bucketOf[i]];
        if (ready[i])
        {
            if (b.Reduction is not null)
                throw new InvalidOperationException("data parallel: a parameter's gradient was accumulated twice in one backward pass after its bucket was sent; use --bucket-mb 0 (one all-reduce after backward)");
            return;
        }
        ready[i] = true;
        b.Pending--;
        while (nextToLaunch < buckets.Length && buckets[nextToLaunch].Pending == 0) Launch(buckets[nextToLaunch++]);
    }

    private void Launch(Bucket b)
    {
        for (int j = 0; j < b.Members.Length; j++)
        {
            var p = parameters[b.Members[j]];
            var span = b.Buffer.AsSpan(b.Offsets[j], p.Numel);
            if (p.Grad is null)
            {
                p.Grad = Tensor.ZerosLike(p);
                span.Clear();
            }
            else HostCopy.Read(p.Grad, span);
        }
        b.Reduction = collective.AllReduceSumAsync(b.Buffer, 0, b.Buffer.Length);
    }
}

/// <summary>Copies between tensors and host spans: directly for contiguous CPU tensors, through a transfer otherwise.</summary>
internal static class HostCopy
{
    /// <summary>The elements of <paramref name="t"/> (f32), row-major, into <paramref name="destination"/>.</summary>
    public static void Read(Tensor t, Span<float> destination)
    {
        if (t.Storage is CpuStorage cpu && t.IsContiguous && t.DType == DType.F32) cpu.AsSpan<float>().Slice(t.Offset, t.Numel).CopyTo(destination);
        else t.ToArray<float>().CopyTo(destination);
    }

    /// <summary><paramref name="source"/> into the elements of <paramref name="t"/> (in place).</summary>
    public static void Write(ReadOnlySpan<float> source, Tensor t)
    {
        if (t.Storage is CpuStorage cpu && t.IsContiguous && t.DType == DType.F32) source.CopyTo(cpu.AsSpan<float>().Slice(t.Offset, t.Numel));
        else t.CopyFrom_(Tensor.FromArray(source.ToArray(), t.Shape, t.Device));
    }
}
