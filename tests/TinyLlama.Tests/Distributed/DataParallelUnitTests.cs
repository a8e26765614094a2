// The pieces of data-parallel training that run in one process (no MPI needed):
// - the post-accumulate-grad hook fires once per backward per leaf, with the gradient that backward leaves
//   (a leaf used twice gets one call, after both uses are summed);
// - a sharded loader's P batches are, row for row, the batch of one loader with P times the batch size;
// - the bucketed reduction launches buckets from inside backward, in reverse parameter order, and writes the
//   sums back (checked with a stand-in collective whose "other rank" holds the same gradients: sum = 2 g);
// - ZeRO stage 1 on one rank (the whole vector is its shard) takes AdamW's steps bit for bit;
// - the sft verb's data-parallel flags: a bad value is a usage error, and --distributed nccl without libnccl (or,
//   where it is installed, on the CPU) is one line.
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Training.Data;
using TinyLlama.Training.Distributed;
using TinyLlama.Training.Trainer;
using TinyLlama.Tests.Cli;
using static TinyLlama.Tests.Training.DataTestUtil;

namespace TinyLlama.Tests.Distributed;

public class DataParallelUnitTests
{
    [Fact]
    public void PostAccumulateGradHookSeesTheFinalGradientOncePerBackward()
    {
        var w = Tensor.FromArray([1f, 2f, 3f]).RequiresGrad_();
        var seen = new List<float[]>();
        using (w.RegisterPostAccumulateGradHook(t => seen.Add(t.Grad!.ToArray<float>())))
        {
            ((w * w).Sum() + (w * 3.0).Sum()).Backward();    // d/dw = 2w + 3, two uses of w
            Assert.Equal([[5f, 7f, 9f]], seen);
            (w * 2.0).Sum().Backward();                       // accumulates: 2w + 3 + 2
            Assert.Equal(2, seen.Count);
            Assert.Equal([7f, 9f, 11f], seen[1]);
        }
        (w * 2.0).Sum().Backward();
        Assert.Equal(2, seen.Count);                          // removed with its handle
    }

    [Theory]
    [InlineData(2, 1)]
    [InlineData(2, 3)]
    [InlineData(3, 2)]
    public void ShardedLoadersTogetherTakeTheSingleProcessBatch(int ranks, int batch)
    {
        var examples = Enumerable.Range(0, 7).Select(i => Synthetic($"f.jsonl:{i + 1}", length: 3 + i % 4, first: 100 * (i + 1), masked: 1)).ToList();
        var single = new SftDataLoader(examples, ranks * batch, shuffle: true, seed: 5, padId: 0, maxLength: 64);
        var shards = Enumerable.Range(0, ranks).Select(r =>
        {
            var l = new SftDataLoader(examples, batch, shuffle: true, seed: 5, padId: 0, maxLength: 64);
            l.Shard(r, ranks);
            return l;
        }).ToList();
        for (int step = 0; step < 5; step++)
        {
            var whole = single.Next().Sources;
            var parts = shards.SelectMany(l => l.Next().Sources).ToArray();
            Assert.Equal(whole, parts);
            Assert.All(shards, l => Assert.Equal(single.GetState(), l.GetState()));
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => shards[0].Shard(ranks, ranks));
    }

    // Two ranks as seen from one: the other rank holds the same values, so every sum is twice the input.
    private sealed class MirrorRank : ICollective
    {
        public List<(int Count, bool DuringBackward)> Launches { get; } = [];
        public bool InBackward { get; set; }
        public int Rank => 0;
        public int WorldSize => 2;
        public void AllReduceSum(Span<double> values) { foreach (ref var v in values) v *= 2; }
        public void AllReduceGradients(IReadOnlyList<Tensor> gradients) => throw new InvalidOperationException("the buckets reduce");
        public Task AllReduceSumAsync(float[] values, int offset, int count)
        {
            Launches.Add((count, InBackward));
            for (int i = offset; i < offset + count; i++) values[i] *= 2;
            return Task.CompletedTask;
        }
    }

    [Fact]
    public void BucketsLaunchDuringBackwardInReverseOrderAndWriteTheSumsBack()
    {
        var g = new Generator(1);
        // Three 32 x 32 f32 layers (4 KB each) and, first in the list, a parameter that gets no gradient: buckets of
        // 4 KB in reverse order are [layer 2], [layer 1], [layer 0], [unused].
        var layers = Enumerable.Range(0, 3).Select(_ => Tensor.RandN([32, 32], g).RequiresGrad_()).ToList();
        var unused = Tensor.RandN([8], g).RequiresGrad_();
        var parameters = layers.Prepend(unused).ToList();
        var mirror = new MirrorRank();
        using var buckets = new GradientBuckets(mirror, parameters, bucketBytes: 4096);
        Assert.Equal(4, buckets.Count);
        Assert.Equal(3 * 4096 + 8 * 4, buckets.BytesPerStep);
        var x = Tensor.RandN([4, 32], g);
        var h = x;
        foreach (var w in layers) h = (h.MatMul(w)).Tanh();
        var loss = h.Sum();
        buckets.Arm();
        mirror.InBackward = true;
        loss.Backward();
        mirror.InBackward = false;
        var local = layers.Select(w => w.Grad!.ToArray<float>()).ToList();
        buckets.Finish();
        // The layers' buckets left while backward went on; the unused parameter's (zeros) at Finish.
        Assert.Equal([(1024, true), (1024, true), (1024, true), (8, false)], mirror.Launches);
        for (int i = 0; i < layers.Count; i++)
            Assert.Equal(local[i].Select(v => 2 * v).ToArray(), layers[i].Grad!.ToArray<float>());
        Assert.Equal(new float[8], unused.Grad!.ToArray<float>());
    }

    [Fact]
    public void ZeroOnOneRankTakesAdamWsStepsBitForBit()
    {
        var g = new Generator(2);
        var a = new[] { Tensor.RandN([5, 7], g), Tensor.RandN([3], g) };
        var b = a.Select(t => t.Clone()).ToArray();
        foreach (var t in a.Concat(b)) t.RequiresGrad_();
        var adamw = new AdamW(a, lr: 1e-2, weightDecay: 0.1);
        var zero = new ZeroAdamW(b, SingleProcess.Instance, 0.9, 0.999, 1e-8, 0.1) { Lr = 1e-2 };
        for (int step = 0; step < 3; step++)
        {
            for (int i = 0; i < a.Length; i++)
            {
                var grad = Tensor.RandN(a[i].Shape, g);
                a[i].Grad = grad.Clone();
                b[i].Grad = grad.Clone();
            }
            adamw.Step();
            zero.Step();
            for (int i = 0; i < a.Length; i++) Assert.Equal(a[i].ToArray<float>(), b[i].ToArray<float>());
        }
        var (m, v) = zero.GatherState();
        for (int i = 0; i < a.Length; i++)
        {
            Assert.Equal(adamw.State(i).M!.ToArray<float>(), m[i]!.ToArray<float>());
            Assert.Equal(adamw.State(i).V!.ToArray<float>(), v[i]!.ToArray<float>());
        }
        Assert.Equal(2L * 4 * (35 + 3), zero.StateBytes);
    }

    [Theory]
    [InlineData("--distributed", "bogus")]
    [InlineData("--zero", "2")]
    [InlineData("--bucket-mb", "-1")]
    [InlineData("--collective-timeout", "0")]
    public void BadDataParallelFlagsAreUsageErrors(string flag, string value)
    {
        var (code, _, err) = CliRunner.Run("sft", "--model", "m", "--data", "d", "--format", "alpaca", "--out", "o", "--steps", "1", "--batch-size", "1", "--lr", "1e-3", flag, value);
        Assert.Contains(flag, CliRunner.AssertOneLineError(2, code, err));
    }

    [SkippableFact]
    public void NcclWithoutItsLibraryOrAGpuIsOneLine()
    {
        var dir = Infrastructure.SharedData.Require("tiny-random-llama");
        using var outDir = new Formats.TempDir();
        var (code, _, err) = CliRunner.Run("sft", "--model", dir, "--data", Path.Combine(dir, "sft_sample.json"), "--format", "alpaca", "--out", outDir.Path,
            "--steps", "1", "--batch-size", "1", "--lr", "1e-3", "--distributed", "nccl");
        Assert.Contains("--distributed nccl", CliRunner.AssertOneLineError(1, code, err));
    }
}
