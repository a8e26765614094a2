// Issue 13's fuzz harness in CI: a bounded, seeded run of every format's target (src/TinyLlama.Cli/Fuzzing)
// that must end with zero unclean outcomes (no exception outside the CLI's one-line set, no message without
// the file's name, no hang, no allocation beyond 64 x input + 32 MiB), and prints the outcome table.
// Long runs: `tinyllama fuzz` / benchmarks/fuzz/run.sh. Also the harness's own parts: determinism from the
// seed, the layouts the structure-aware mutators rely on, and the outcome classifier.
using System.Buffers.Binary;
using TinyLlama.Cli;
using TinyLlama.Cli.Fuzzing;
using TinyLlama.Tests.Backends;
using TinyLlama.Tests.Formats;
using TinyLlama.Tests.Infrastructure;
using Xunit.Abstractions;

namespace TinyLlama.Tests.Fuzz;

// FuzzRunner pins CpuThreads.Count to 1 while it runs, so nothing that depends on the count runs beside it.
[Collection(CpuThreadsCollection.Name)]
public class FuzzSuiteTests(ITestOutputHelper output)
{
    /// <summary>Inputs per format in CI (~11 formats x this, well under a minute in Release on 2 cores).</summary>
    private const int CountPerFormat = 400;

    public static TheoryData<string> Formats() => new(FuzzTargets.Names);

    [Theory]
    [MemberData(nameof(Formats))]
    public void EveryInputEndsCleanlyOrLoadsWithFiniteLogits(string format)
    {
        using var work = new TempDir();
        var targets = FuzzTargets.Create([format], work.Path, SharedData.ReferenceDir);
        var tallies = FuzzRunner.Run(targets, work.Path, new FuzzSettings(CountPerFormat, Seed: 1, TimeSpan.FromSeconds(30)));
        output.WriteLine(FuzzRunner.Table(tallies));
        var tally = Assert.Single(tallies);
        Assert.Equal(CountPerFormat, tally.Inputs);
        Assert.True(tally.Counts[(int)FuzzOutcome.Unclean] == 0, FuzzRunner.Table(tallies));
        // The mutators must reach past the first check: some inputs load, some are refused.
        Assert.True(tally.Counts[(int)FuzzOutcome.Ok] + tally.Counts[(int)FuzzOutcome.NonFinite] > 0, $"{format}: no input loaded");
        Assert.True(tally.Counts[(int)FuzzOutcome.Clean] > 0, $"{format}: no input was refused");
    }

    [Fact]
    public void MutationsAreDeterministicFromSeedAndIndex()
    {
        var seed = FuzzSeeds.Llama2C();
        var mutator = BinaryMutator.Llama2C(seed);
        for (int i = 0; i < 50; i++)
            Assert.Equal(mutator.Mutate(FuzzRandom.ForInput(7, i)), mutator.Mutate(FuzzRandom.ForInput(7, i)));
        int differ = Enumerable.Range(0, 50).Count(i => !mutator.Mutate(FuzzRandom.ForInput(7, i)).AsSpan().SequenceEqual(seed));
        Assert.True(differ >= 45, $"only {differ} of 50 inputs differ from the seed");
        Assert.NotEqual(mutator.Mutate(FuzzRandom.ForInput(7, 0)), mutator.Mutate(FuzzRandom.ForInput(8, 0)));
    }

    [Fact]
    public void GgufLayoutFindsHeaderCountsAndEveryTensorOffset()
    {
        using var work = new TempDir();
        var file = FuzzSeeds.Gguf(work.Path);
        var layout = FormatLayouts.Gguf(file);
        // Hand-checked against the GGUF header: u32 version at 4, u64 tensor count at 8, u64 metadata count at 16.
        Assert.Contains(layout.Ints, f => f.Offset == 4 && f.Width == 4 && f.Value == 3);
        Assert.Contains(layout.Ints, f => f.Offset == 8 && f.Width == 8 && f.Value == FuzzSeeds.Weights().Count);
        Assert.Contains(layout.Ints, f => f.Offset == 16 && f.Width == 8 && f.Value == BinaryPrimitives.ReadInt64LittleEndian(file.AsSpan(16)));
        Assert.Equal(file.Length, layout.Boundaries[^1]);
        Assert.True(layout.Floats.Count >= FuzzSeeds.Weights().Count);
    }

    [Fact]
    public void SafetensorsLayoutHasTheLengthFieldAndEachTensorEnd()
    {
        using var work = new TempDir();
        var file = FuzzSeeds.SafetensorsBytes(FuzzSeeds.Weights(), work.Path);
        var layout = FormatLayouts.Safetensors(file);
        long n = BinaryPrimitives.ReadInt64LittleEndian(file);
        Assert.Equal(new IntField(0, 8, IntEncoding.LittleEndian, n), layout.Ints.Single());
        Assert.Contains((int)(8 + n), layout.Boundaries);
        Assert.Equal(file.Length, layout.Boundaries[^1]);
        Assert.Equal(3 + FuzzSeeds.Weights().Count, layout.Boundaries.Count);
    }

    [Fact]
    public void ProtobufLayoutFindsEveryPieceAndScore()
    {
        var file = FuzzSeeds.SentencePieceModel();
        var layout = FormatLayouts.Protobuf(file);
        // 268 pieces: each has one fixed32 score; the piece strings are text spans.
        Assert.Equal(FuzzSeeds.ByteTokenizer().VocabSize, layout.Floats.Count);
        Assert.True(layout.Strings.Count >= layout.Floats.Count);
        Assert.Contains(file.Length, layout.Boundaries);
    }

    [Fact]
    public void ClassifierAcceptsOnlyOneLineErrorsOfTheCliSetThatNameTheInput()
    {
        const string dir = "/tmp/fuzz-case0";
        Assert.Equal(FuzzOutcome.Clean, FuzzRunner.Classify(new InvalidDataException($"{dir}/model.gguf: bad"), dir).Outcome);
        Assert.Equal(FuzzOutcome.Clean, FuzzRunner.Classify(new CliException($"--model: {dir} does not exist"), dir).Outcome);
        Assert.Equal(FuzzOutcome.Clean, FuzzRunner.Classify(new FileNotFoundException($"{dir}/x missing"), dir).Outcome);
        // A clean type whose message names no file: an index error from the BCL, say.
        Assert.Equal(FuzzOutcome.Unclean, FuzzRunner.Classify(new ArgumentOutOfRangeException("index"), dir).Outcome);
        Assert.Equal(FuzzOutcome.Unclean, FuzzRunner.Classify(new InvalidDataException($"{dir}/a\nsecond line"), dir).Outcome);
        Assert.Equal(FuzzOutcome.Unclean, FuzzRunner.Classify(new InvalidOperationException($"{dir}/a: no"), dir).Outcome);
        Assert.Equal(FuzzOutcome.Unclean, FuzzRunner.Classify(new OutOfMemoryException(), dir).Outcome);
    }
}
