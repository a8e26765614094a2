// Batching SFT examples for the trainer, with a position that a checkpoint can save and restore.
//
// A batch is B examples, right-padded to the longest one. Following the label convention of
// SftExample, row b of the batch holds
//     InputIds[b, t] = ids[t]          for t < len_b - 1, else the pad id
//     Targets[b, t]  = labels[t + 1]   for t < len_b - 1, else -100
// so T = max_b(len_b) - 1 (the longest sequence in the batch after the shift, never maxLength itself)
// and the trainer's loss is the mean cross-entropy over the TargetCount positions whose target is not
// -100 (the mean over tokens of the whole batch, as Hugging Face's Trainer computes it for causal LMs).
// Right padding is safe under causal attention: real tokens only attend to earlier positions, so the
// pad tokens after them are never seen, and their targets are -100, so they never count in the loss.
// Llama's tokenizer has no pad piece (pad id -1); any id is fine as input padding, so a negative pad id
// becomes 0.
//
// Order: without shuffle, consecutive examples in the given (file) order, wrapping at the end; a batch
// may straddle the wrap. With shuffle, epoch e visits the examples in a permutation drawn by
// Fisher-Yates from a Generator seeded with (seed, e), so the permutation is a pure function of the
// seed and the epoch: the whole loader state is (epoch, position, seed, shuffle), resume is exact and
// the checkpoint stays a few bytes however large the data set is.
//
// Data parallelism (Shard): rank r of P draws the P x B examples a single process with batch size P x B
// would take and keeps rows [r B, (r + 1) B), so the P ranks together see exactly the records of the
// single-process global batch, disjointly, and every rank's loader stays at the same position (a checkpoint
// written by rank 0 resumes every rank).
using System.Text;
using System.Text.Json;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;

namespace TinyLlama.Training.Data;

/// <summary>A batch of SFT examples: inputs and next-token targets, right-padded.</summary>
public sealed class SftBatch
{
    /// <summary>(B, T) int32 input ids, right-padded with the pad id.</summary>
    public required Tensor InputIds { get; init; }

    /// <summary>(B, T) int32 targets: the labels shifted left by one; -100 where masked or padding.</summary>
    public required Tensor Targets { get; init; }

    /// <summary>Number of targets that are not -100: the denominator of the batch's mean loss.</summary>
    public required int TargetCount { get; init; }

    /// <summary>Where each row came from (<see cref="SftExample.Source"/>), for logs and debugging (empty if not given).</summary>
    public string[] Sources { get; init; } = [];

    /// <summary>Real (unpadded) length of each row after the shift: the example's length, cut to maxLength, minus one (empty if not given).</summary>
    public int[] Lengths { get; init; } = [];

    /// <summary>Batch size B.</summary>
    public int BatchSize => InputIds.Size(0);

    /// <summary>Sequence length T.</summary>
    public int SequenceLength => InputIds.Size(1);
}

/// <summary>
/// Where an <see cref="SftDataLoader"/> is: enough to continue with exactly the batches that would have
/// come next. Saved in training checkpoints as JSON (<see cref="ToJson"/>, <see cref="FromJson"/>).
/// </summary>
/// <param name="Epoch">Completed passes over the data; the next example comes from this epoch.</param>
/// <param name="Position">Index, within the epoch's order, of the next example.</param>
/// <param name="Seed">The shuffle seed.</param>
/// <param name="Shuffle">Whether epochs are shuffled.</param>
/// <param name="ExampleCount">Number of examples, to refuse resuming over different data.</param>
public sealed record DataLoaderState(int Epoch, int Position, ulong Seed, bool Shuffle, int ExampleCount)
{
    private const string Kind = "sft_data_loader";

    /// <summary>JSON object: <c>{"kind": "sft_data_loader", "epoch", "position", "seed", "shuffle", "example_count"}</c>.</summary>
    public string ToJson()
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream))
        {
            w.WriteStartObject();
            w.WriteString("kind", Kind);
            w.WriteNumber("epoch", Epoch);
            w.WriteNumber("position", Position);
            w.WriteNumber("seed", Seed);
            w.WriteBoolean("shuffle", Shuffle);
            w.WriteNumber("example_count", ExampleCount);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }

    /// <summary>Reads what <see cref="ToJson"/> wrote.</summary>
    /// <exception cref="InvalidDataException">Not such an object, or a field is missing or of the wrong type.</exception>
    public static DataLoaderState FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json); }
        catch (JsonException e) { throw new InvalidDataException($"data loader state: malformed JSON: {e.Message}", e); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException("data loader state: expected a JSON object");
            if (!root.TryGetProperty("kind", out var kind) || kind.ValueKind != JsonValueKind.String || kind.GetString() != Kind)
                throw new InvalidDataException($"data loader state: field \"kind\" must be \"{Kind}\"");
            return new DataLoaderState(Int(root, "epoch"), Int(root, "position"), UInt64(root, "seed"), Bool(root, "shuffle"), Int(root, "example_count"));
        }

        static JsonElement Field(JsonElement root, string name, JsonValueKind kind)
        {
            if (!root.TryGetProperty(name, out var value)) throw new InvalidDataException($"data loader state: field \"{name}\" is missing");
            if (value.ValueKind != kind && !(kind == JsonValueKind.True && value.ValueKind == JsonValueKind.False))
                throw new InvalidDataException($"data loader state: field \"{name}\" has the wrong type ({value.ValueKind})");
            return value;
        }
        static int Int(JsonElement root, string name) =>
            Field(root, name, JsonValueKind.Number).TryGetInt32(out int v) ? v : throw new InvalidDataException($"data loader state: field \"{name}\" is not a 32-bit integer");
        static ulong UInt64(JsonElement root, string name) =>
            Field(root, name, JsonValueKind.Number).TryGetUInt64(out ulong v) ? v : throw new InvalidDataException($"data loader state: field \"{name}\" is not an unsigned 64-bit integer");
        static bool Bool(JsonElement root, string name) => Field(root, name, JsonValueKind.True).GetBoolean();
    }
}

/// <summary>
/// Endless batches over a list of SFT examples, in file order or shuffled per epoch, with a resumable
/// position (<see cref="GetState"/>, <see cref="SetState"/>).
/// </summary>
public sealed class SftDataLoader
{
    private readonly IReadOnlyList<SftExample> examples;
    private readonly int batchSize, padId, maxLength;
    private readonly ExampleOrder order;
    private int shardRank, shardCount = 1;

    /// <summary>Completed passes over the data (the epoch the next example comes from).</summary>
    public int Epoch => order.Epoch;

    /// <summary>Index, within the current epoch's order, of the next example (0 ≤ Position &lt; Count).</summary>
    public int Position => order.Position;

    /// <summary>Number of examples.</summary>
    public int Count => examples.Count;

    /// <summary>Batches per epoch, ceil(Count / B) (a batch may straddle two epochs).</summary>
    public int BatchesPerEpoch => (examples.Count + batchSize - 1) / batchSize;

    /// <summary>Examples longer than maxLength, which every batch cuts to maxLength tokens (their end is never trained on).</summary>
    public int TruncatedCount { get; }

    /// <summary>The id used for input padding (the given pad id, or 0 where it was negative).</summary>
    public int PadId => padId;

    /// <summary>
    /// A loader over <paramref name="examples"/> (not copied; must not change while the loader is used).
    /// </summary>
    /// <param name="examples">At least one example, each of length ≥ 2 and obeying the label convention.</param>
    /// <param name="batchSize">Examples per batch, B.</param>
    /// <param name="shuffle">Visit each epoch in a fresh permutation drawn from (seed, epoch).</param>
    /// <param name="seed">Shuffle seed.</param>
    /// <param name="padId">Input padding id; a negative id (Llama has none, -1) becomes 0. Padding never reaches the loss.</param>
    /// <param name="maxLength">Longer examples are cut to this many tokens; see <see cref="TruncatedCount"/>.</param>
    public SftDataLoader(IReadOnlyList<SftExample> examples, int batchSize, bool shuffle, ulong seed, int padId, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (examples.Count == 0) throw new ArgumentException("the data loader needs at least one example", nameof(examples));
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 2);
        this.examples = examples;
        this.batchSize = batchSize;
        this.padId = padId < 0 ? 0 : padId;
        this.maxLength = maxLength;
        int truncated = 0;
        foreach (var e in examples)
        {
            e.Validate();
            if (e.Length < 2) throw new ArgumentException($"{e.Source}: an example needs at least 2 tokens to have a target", nameof(examples));
            if (e.Length > maxLength) truncated++;
        }
        TruncatedCount = truncated;
        order = new ExampleOrder(examples.Count, shuffle, seed);
    }

    /// <summary>The input padding id for a tokenizer: its pad id, or 0 where it has none (Llama's is -1), as the constructor does.</summary>
    public static int InputPadId(LlamaTokenizer tokenizer) => Math.Max(tokenizer.PadId, 0);

    /// <summary>
    /// The next B examples as a batch (advancing <see cref="Position"/>, and <see cref="Epoch"/> at the wrap);
    /// with a <see cref="Shard"/>, this rank's B of the next P x B.
    /// </summary>
    public SftBatch Next()
    {
        var rows = new SftExample[batchSize];
        for (int i = 0; i < shardCount * batchSize; i++)
        {
            int index = order.Next();
            int b = i - shardRank * batchSize;
            if (b >= 0 && b < batchSize) rows[b] = examples[index];
        }
        return Collate(rows, padId, maxLength);
    }

    /// <summary>
    /// Makes this loader rank <paramref name="rank"/>'s share of <paramref name="count"/> data-parallel ranks:
    /// each batch is rows [rank B, (rank + 1) B) of the P x B examples that follow, so the ranks' batches
    /// together are the batch of one process with batch size P x B.
    /// </summary>
    public void Shard(int rank, int count)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        if (rank < 0 || rank >= count) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} is not in [0, {count})");
        if ((long)count * batchSize > int.MaxValue) throw new ArgumentException($"{count} ranks x batch size {batchSize} is too large a global batch");
        shardRank = rank;
        shardCount = count;
    }

    /// <summary>The position, to save in a checkpoint.</summary>
    public DataLoaderState GetState() => order.GetState();

    /// <summary>
    /// Continues from a saved position: the following batches are exactly those that followed when the
    /// state was taken. The state's seed and shuffle setting win over the constructor's.
    /// </summary>
    /// <exception cref="InvalidOperationException">The state was taken over a different number of examples.</exception>
    public void SetState(DataLoaderState state) => order.SetState(state);

    /// <summary>
    /// Builds a batch from rows (each cut to <paramref name="maxLength"/>): inputs ids[..^1] and targets
    /// labels[1..], right-padded to the longest row. Public so evaluation can batch a fixed list.
    /// </summary>
    public static SftBatch Collate(IReadOnlyList<SftExample> rows, int padId, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(rows);
        if (rows.Count == 0) throw new ArgumentException("a batch needs at least one row", nameof(rows));
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 2);
        if (padId < 0) padId = 0;
        int B = rows.Count;
        var lengths = new int[B];
        var sources = new string[B];
        int T = 1;
        for (int b = 0; b < B; b++)
        {
            if (rows[b].Length < 2) throw new ArgumentException($"{rows[b].Source}: an example needs at least 2 tokens to have a target", nameof(rows));
            lengths[b] = Math.Min(rows[b].Length, maxLength) - 1;
            sources[b] = rows[b].Source;
            T = Math.Max(T, lengths[b]);
        }
        var inputs = new int[B * T];   // (B, T)
        var targets = new int[B * T];  // (B, T)
        Array.Fill(inputs, padId);
        Array.Fill(targets, TrainingInfo.IgnoreIndex);
        int targetCount = 0;
        for (int b = 0; b < B; b++)
        {
            int[] ids = rows[b].InputIds, labels = rows[b].Labels;
            int row = b * T;
            for (int t = 0; t < lengths[b]; t++)
            {
                inputs[row + t] = ids[t];
                int target = labels[t + 1];
                targets[row + t] = target;
                if (target != TrainingInfo.IgnoreIndex) targetCount++;
            }
        }
        return new SftBatch
        {
            InputIds = Tensor.FromArray(inputs, [B, T]),
            Targets = Tensor.FromArray(targets, [B, T]),
            TargetCount = targetCount,
            Sources = sources,
            Lengths = lengths,
        };
    }

}

/// <summary>
/// The order a loader visits n examples in, and its position: consecutive indices wrapping at the end, or
/// a fresh permutation per epoch drawn from (seed, epoch). Shared by <see cref="SftDataLoader"/> and the
/// preference-pair loader, whose whole saved state it is.
/// </summary>
internal sealed class ExampleOrder
{
    private readonly int count;
    private ulong seed;
    private bool shuffle;
    private int[] order;

    public ExampleOrder(int count, bool shuffle, ulong seed)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        this.count = count;
        this.shuffle = shuffle;
        this.seed = seed;
        order = OrderFor(0);
    }

    public int Epoch { get; private set; }

    public int Position { get; private set; }

    /// <summary>The index of the next example (advancing Position, and Epoch at the wrap).</summary>
    public int Next()
    {
        int index = order[Position];
        if (++Position == count)
        {
            Position = 0;
            Epoch++;
            order = OrderFor(Epoch);
        }
        return index;
    }

    public DataLoaderState GetState() => new(Epoch, Position, seed, shuffle, count);

    /// <summary>Validates <paramref name="state"/> against this order's example count, then continues from it.</summary>
    public void SetState(DataLoaderState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (state.ExampleCount != count)
            throw new InvalidOperationException($"the data loader state was saved over {state.ExampleCount} examples, but this loader has {count}: the data changed");
        if (state.Epoch < 0 || state.Position < 0 || state.Position >= count)
            throw new ArgumentOutOfRangeException(nameof(state), $"epoch {state.Epoch}, position {state.Position} is not a position over {count} examples");
        seed = state.Seed;
        shuffle = state.Shuffle;
        Epoch = state.Epoch;
        Position = state.Position;
        order = OrderFor(Epoch);
    }

    private int[] OrderFor(int epoch)
    {
        if (!shuffle)
        {
            var identity = new int[count];
            for (int i = 0; i < identity.Length; i++) identity[i] = i;
            return identity;
        }
        return Shuffling.Permutation(count, Shuffling.ForEpoch(seed, epoch));
    }
}

/// <summary>Seeded permutations shared by the loader, the mixture and the validation split.</summary>
internal static class Shuffling
{
    /// <summary>A uniformly random permutation of 0..n-1 (Fisher-Yates, drawing from the end).</summary>
    public static int[] Permutation(int n, Generator generator)
    {
        var p = new int[n];
        for (int i = 0; i < n; i++) p[i] = i;
        for (int i = n - 1; i > 0; i--)
        {
            int j = generator.NextInt(i + 1);
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }

    /// <summary>
    /// An independent generator per (seed, stream): the stream index is folded into the seed with the
    /// golden-ratio increment SplitMix64 uses, and Generator's SplitMix64 seeding decorrelates the rest.
    /// </summary>
    public static Generator ForEpoch(ulong seed, int stream) => new(seed + 0x9E3779B97F4A7C15UL * (ulong)(stream + 1));
}
