// The SFT data loader: batch layout (shift, right padding, -100 targets, T = longest - 1, TargetCount),
// truncation, order without shuffle (file order, wrapping), shuffle determinism, and exact resume from
// GetState/SetState through JSON, mid-epoch and across an epoch boundary.
using TinyLlama.Training.Data;
using static TinyLlama.Tests.Training.DataTestUtil;

namespace TinyLlama.Tests.Training;

public class DataLoaderTests
{
    private static List<SftExample> Numbered(int count) =>
        [.. Enumerable.Range(0, count).Select(i => Synthetic($"f.jsonl:{i + 1}", length: 3 + i % 4, first: 100 * (i + 1), masked: 1 + i % 2))];

    private static (int[] Inputs, int[] Targets, int Count, string[] Sources, int[] Shape) Snapshot(SftBatch b) =>
        (b.InputIds.ToArray<int>(), b.Targets.ToArray<int>(), b.TargetCount, b.Sources, b.InputIds.Shape);

    private static void AssertSameBatch(SftBatch expected, SftBatch actual)
    {
        var (ei, et, ec, es, esh) = Snapshot(expected);
        var (ai, at, ac, asrc, ash) = Snapshot(actual);
        Assert.Equal(esh, ash);
        Assert.Equal(ei, ai);
        Assert.Equal(et, at);
        Assert.Equal(ec, ac);
        Assert.Equal(es, asrc);
    }

    [Fact]
    public void Batch_ShiftsRightPadsAndMasksPadding()
    {
        var a = new SftExample([1, 5, 6, 7, 2], [M, M, 6, 7, 2], "a:1");
        var b = new SftExample([1, 8, 2], [M, 8, 2], "b:1");
        var loader = new SftDataLoader([a, b], batchSize: 2, shuffle: false, seed: 0, padId: -1, maxLength: 64);
        var batch = loader.Next();
        Assert.Equal([2, 4], batch.InputIds.Shape);   // T = longest (5) - 1, not maxLength
        Assert.Equal([2, 4], batch.Targets.Shape);
        Assert.Equal(2, batch.BatchSize);
        Assert.Equal(4, batch.SequenceLength);
        Assert.Equal(TinyLlama.Tensors.DType.I32, batch.InputIds.DType);
        Assert.Equal(TinyLlama.Tensors.DType.I32, batch.Targets.DType);
        Assert.Equal([1, 5, 6, 7, /**/ 1, 8, 0, 0], batch.InputIds.ToArray<int>());       // pad -1 -> 0
        Assert.Equal([M, 6, 7, 2, /**/ 8, 2, M, M], batch.Targets.ToArray<int>());        // labels[1..], padding -100
        Assert.Equal(5, batch.TargetCount);
        Assert.Equal([4, 2], batch.Lengths);
        Assert.Equal(["a:1", "b:1"], batch.Sources);

        var padded = new SftDataLoader([a, b], 2, false, 0, padId: 3, maxLength: 64).Next();
        Assert.Equal([1, 5, 6, 7, 1, 8, 3, 3], padded.InputIds.ToArray<int>());
        Assert.Equal(batch.Targets.ToArray<int>(), padded.Targets.ToArray<int>());
    }

    [Fact]
    public void Batch_TruncatesToMaxLength_AndCountsIt()
    {
        var a = new SftExample([1, 5, 6, 7, 2], [M, M, 6, 7, 2], "a:1");
        var b = new SftExample([1, 8, 2], [M, 8, 2], "b:1");
        var loader = new SftDataLoader([a, b], 2, false, 0, -1, maxLength: 3);
        Assert.Equal(1, loader.TruncatedCount);
        var batch = loader.Next();
        Assert.Equal([2, 2], batch.InputIds.Shape);
        Assert.Equal([1, 5, 1, 8], batch.InputIds.ToArray<int>());
        Assert.Equal([M, 6, 8, 2], batch.Targets.ToArray<int>());
        Assert.Equal(3, batch.TargetCount);
    }

    [Fact]
    public void NoShuffle_ConsecutiveInFileOrder_WrapsAtTheEnd()
    {
        var examples = Numbered(5);
        var loader = new SftDataLoader(examples, 2, false, 0, 0, 64);
        var seen = new List<string>();
        var epochs = new List<int>();
        for (int k = 0; k < 5; k++)
        {
            seen.AddRange(loader.Next().Sources);
            epochs.Add(loader.Epoch);
        }
        Assert.Equal(["f.jsonl:1", "f.jsonl:2", "f.jsonl:3", "f.jsonl:4", "f.jsonl:5", "f.jsonl:1", "f.jsonl:2", "f.jsonl:3", "f.jsonl:4", "f.jsonl:5"], seen);
        Assert.Equal([0, 0, 1, 1, 2], epochs);
        Assert.Equal(0, loader.Position);
        Assert.Equal(3, loader.BatchesPerEpoch);
    }

    [Fact]
    public void Shuffle_IsAPermutationPerEpoch_DeterministicPerSeed()
    {
        var examples = Numbered(12);
        List<string> Run(ulong seed)
        {
            var loader = new SftDataLoader(examples, 3, true, seed, 0, 64);
            return [.. Enumerable.Range(0, 8).SelectMany(_ => loader.Next().Sources)]; // two epochs
        }
        var first = Run(42);
        Assert.Equal(first, Run(42));
        Assert.NotEqual(first, Run(43));
        var all = examples.Select(e => e.Source).Order().ToList();
        Assert.Equal(all, first[..12].Order().ToList());   // epoch 0 visits each example once
        Assert.Equal(all, first[12..].Order().ToList());   // so does epoch 1
        Assert.NotEqual(first[..12], first[12..]);          // in a fresh order
        Assert.NotEqual(examples.Select(e => e.Source).ToList(), first[..12]);
    }

    [Theory]
    // 7 examples, B = 3.
    [InlineData(false, 1)]   // mid-epoch (epoch 0, position 3)
    [InlineData(false, 2)]   // the next batch straddles the wrap (positions 6, 0, 1)
    [InlineData(true, 2)]    // likewise, shuffled: the next batch mixes two permutations
    [InlineData(true, 3)]    // just after a wrap (epoch 1, position 2)
    [InlineData(true, 7)]    // exactly at an epoch boundary: 21 = 3 x 7 examples (epoch 3, position 0)
    public void GetStateSetState_ResumesToExactlyTheSameBatches(bool shuffle, int batchesBefore)
    {
        var examples = Numbered(7);
        var original = new SftDataLoader(examples, 3, shuffle, 7, 0, 64);
        for (int k = 0; k < batchesBefore; k++) original.Next();
        string json = original.GetState().ToJson();

        var resumed = new SftDataLoader(examples, 3, shuffle: !shuffle, seed: 999, padId: 0, maxLength: 64); // the state wins
        resumed.SetState(DataLoaderState.FromJson(json));
        Assert.Equal(original.Epoch, resumed.Epoch);
        Assert.Equal(original.Position, resumed.Position);
        int epochBefore = original.Epoch;
        for (int k = 0; k < 6; k++) AssertSameBatch(original.Next(), resumed.Next());
        Assert.True(original.Epoch > epochBefore); // the compared batches crossed an epoch boundary
    }

    [Fact]
    public void State_JsonRoundTrip_AndRefusesOtherData()
    {
        var state = new DataLoaderState(Epoch: 3, Position: 5, Seed: ulong.MaxValue - 1, Shuffle: true, ExampleCount: 9);
        Assert.Equal(state, DataLoaderState.FromJson(state.ToJson()));
        Assert.Contains("\"seed\":18446744073709551614", state.ToJson());

        var loader = new SftDataLoader(Numbered(8), 2, true, 1, 0, 64);
        var e = Assert.Throws<InvalidOperationException>(() => loader.SetState(state));
        Assert.Contains("9 examples", e.Message);
        Assert.Throws<InvalidDataException>(() => DataLoaderState.FromJson("{\"kind\": \"sft_data_loader\", \"epoch\": 1}"));
        Assert.Throws<InvalidDataException>(() => DataLoaderState.FromJson("{not json"));
    }

    [Fact]
    public void Constructor_RejectsExamplesThatBreakTheLabelConvention()
    {
        var bad = new SftExample([1, 5, 6], [M, 9, 6], "x:3");
        var e = Assert.Throws<ArgumentException>(() => new SftDataLoader([bad], 1, false, 0, 0, 64));
        Assert.Contains("x:3", e.Message);
        Assert.Throws<ArgumentException>(() => new SftDataLoader([new SftExample([1], [M], "y:1")], 1, false, 0, 0, 64));
        Assert.Throws<ArgumentException>(() => new SftDataLoader([new SftExample([1, 2], [M], "z:1")], 1, false, 0, 0, 64));
    }
}
