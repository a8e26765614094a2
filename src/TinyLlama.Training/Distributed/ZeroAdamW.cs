// ZeRO stage 1 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models",
// SC 2020, section 5.1: optimizer state partitioning) for AdamW:
//
//   flatten the trainable parameters in order into one vector of N values; rank r owns the contiguous shard
//   [r S, min((r + 1) S, N)), S = ceil(N / P);
//   every rank has the full all-reduced gradient (so the global gradient norm, and clipping, are the same
//   everywhere); each rank keeps AdamW's moments m and v for its shard only (2 x 4 x S bytes instead of
//   2 x 4 x N) and updates only its shard, with the same fused backend kernel AdamW uses, applied to a view
//   of each parameter's piece of the shard, so each element gets exactly the update AdamW would give it;
//   then the updated shards are all-gathered so every rank holds every parameter again.
//
// Checkpoints stay in AdamW's format: GatherState assembles the full moments (a collective: every rank
// calls it) and SetState keeps this rank's shard of full moments read from a checkpoint.
using TinyLlama.Autograd;
using TinyLlama.Tensors;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Training.Distributed;

/// <summary>AdamW whose moments are sharded across ranks (ZeRO stage 1); parameters must be f32.</summary>
internal sealed class ZeroAdamW
{
    // A piece of the shard: parameter Param's flat elements [Start, Start + Length), at ShardOffset in the shard.
    private readonly record struct Segment(int Param, int Start, int Length, int ShardOffset);

    private readonly IReadOnlyList<Tensor> parameters;
    private readonly ICollective collective;
    private readonly Segment[] segments;
    private readonly long total;
    private readonly int shardSize;       // S: every rank's shard length (the last one padded)
    private readonly long shardStart;
    private readonly Tensor?[] m, v;      // per segment, (Length) f32; null before the first update

    public ZeroAdamW(IReadOnlyList<Tensor> parameters, ICollective collective, double beta1, double beta2, double eps, double weightDecay)
    {
        this.parameters = parameters;
        this.collective = collective;
        Beta1 = beta1;
        Beta2 = beta2;
        Eps = eps;
        WeightDecay = weightDecay;
        foreach (var p in parameters)
        {
            if (p.DType != DType.F32 || !p.IsContiguous)
                throw new ArgumentException($"ZeRO stage 1 shards contiguous f32 parameters; a trainable parameter is {p.DType.Name()}{(p.IsContiguous ? "" : " and strided")}");
            total += p.Numel;
        }
        int P = collective.WorldSize;
        long s = (total + P - 1) / P;
        if (s > Array.MaxLength) throw new NotSupportedException($"ZeRO stage 1: a shard of {s} values does not fit one buffer");
        shardSize = (int)s;
        shardStart = Math.Min(total, (long)collective.Rank * s);
        long shardEnd = Math.Min(total, shardStart + s);
        var list = new List<Segment>();
        long offset = 0;
        for (int i = 0; i < parameters.Count; i++)
        {
            long lo = Math.Max(offset, shardStart), hi = Math.Min(offset + parameters[i].Numel, shardEnd);
            if (lo < hi) list.Add(new Segment(i, (int)(lo - offset), (int)(hi - lo), (int)(lo - shardStart)));
            offset += parameters[i].Numel;
        }
        segments = [.. list];
        m = new Tensor?[segments.Length];
        v = new Tensor?[segments.Length];
    }

    public double Lr { get; set; }
    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }
    public double WeightDecay { get; }

    /// <summary>Steps taken (t in the bias corrections).</summary>
    public int StepCount { get; private set; }

    /// <summary>Bytes of AdamW state this rank holds (m and v of its shard, f32).</summary>
    public long StateBytes => 2L * sizeof(float) * (long)(segments.Length == 0 ? 0 : segments.Sum(s => (long)s.Length));

    /// <summary>Bytes AdamW's state would take unsharded (m and v of every parameter, f32).</summary>
    public long FullStateBytes => 2L * sizeof(float) * total;

    /// <summary>Updates this rank's shard of every parameter that has a gradient, then all-gathers the parameters.</summary>
    public void Step()
    {
        using var _ = GradMode.NoGrad();
        StepCount++;
        for (int k = 0; k < segments.Length; k++)
        {
            var seg = segments[k];
            var p = parameters[seg.Param];
            if (p.Grad is null) continue;
            if (m[k] is null)
            {
                using var untracked = DisposeScope.Untracked();
                m[k] = Tensor.Zeros([seg.Length], DType.F32, p.Device);
                v[k] = Tensor.Zeros([seg.Length], DType.F32, p.Device);
            }
            var grad = p.Grad.DType == DType.F32 && p.Grad.IsContiguous ? p.Grad : p.Grad.To(DType.F32).Contiguous();
            p.Backend.AdamWStep(Piece(p, seg), Piece(grad, seg), m[k]!, v[k]!, Lr, Beta1, Beta2, Eps, WeightDecay, StepCount);
        }
        AllGatherParameters();
    }

    /// <summary>The full moments of every parameter (null before the first step), gathered from all ranks: a collective.</summary>
    public (Tensor?[] M, Tensor?[] V) GatherState()
    {
        var fullM = new Tensor?[parameters.Count];
        var fullV = new Tensor?[parameters.Count];
        if (StepCount == 0) return (fullM, fullV);
        foreach (var (moments, full) in new[] { (m, fullM), (v, fullV) })
        {
            var all = Gather(k => moments[k]);
            long offset = 0;
            for (int i = 0; i < parameters.Count; i++)
            {
                var values = all.AsSpan((int)offset, parameters[i].Numel).ToArray();
                full[i] = Tensor.FromArray(values, parameters[i].Shape);
                offset += parameters[i].Numel;
            }
        }
        return (fullM, fullV);
    }

    /// <summary>Restores the step count and keeps this rank's shard of full moments (checkpoint resume).</summary>
    public void SetState(int step, IReadOnlyList<Tensor?> moments1, IReadOnlyList<Tensor?> moments2)
    {
        if (moments1.Count != parameters.Count || moments2.Count != parameters.Count)
            throw new ArgumentException($"optimizer state has {moments1.Count} entries for {parameters.Count} parameters");
        StepCount = step;
        using var _ = DisposeScope.Untracked();
        for (int k = 0; k < segments.Length; k++)
        {
            var seg = segments[k];
            m[k] = moments1[seg.Param] is Tensor m1 ? Piece(m1.To(DType.F32).Contiguous(), seg).Clone() : null;
            v[k] = moments2[seg.Param] is Tensor m2 ? Piece(m2.To(DType.F32).Contiguous(), seg).Clone() : null;
        }
    }

    private static Tensor Piece(Tensor t, Segment seg) => t.Detach().View(-1).Narrow(0, seg.Start, seg.Length);

    // Every rank's shard of the flattened parameters, updated, to every rank.
    private void AllGatherParameters()
    {
        var all = Gather(k => Piece(parameters[segments[k].Param], segments[k]));
        long offset = 0;
        foreach (var p in parameters)
        {
            HostCopy.Write(all.AsSpan((int)offset, p.Numel), p);
            offset += p.Numel;
        }
    }

    // All-gathers the shard assembled from piece(k) of each segment (zeros where piece is null): P x S values,
    // whose first N are the flattened vector.
    private float[] Gather(Func<int, Tensor?> piece)
    {
        var mine = new float[shardSize];
        for (int k = 0; k < segments.Length; k++)
            if (piece(k) is Tensor t) HostCopy.Read(t, mine.AsSpan(segments[k].ShardOffset, segments[k].Length));
        var all = new float[(long)shardSize * collective.WorldSize];
        collective.AllGather(mine, all);
        return all;
    }
}
