// Preference pairs for reward modelling and DPO: records {"prompt": ..., "chosen": ..., "rejected": ...}
// in a JSON Lines file or a JSON array (the layout of TRL's preference datasets with an explicit prompt,
// e.g. Anthropic HH-RLHF as TRL prepares it, and of DPO's paper data), read through SftRecordReader so
// every problem is one "file:line: field ..." line.
//
// Tokenised form: chosen and rejected each become an SftExample with the convention of AlpacaTemplate,
// BOS + encode(prompt + response) + EOS with the 1 + len(encode(prompt)) prompt positions masked, so the
// response tokens (and EOS) are exactly the unmasked labels. Each side is cut to maxLength tokens (counted
// as truncated); a pair where either side keeps no response token is dropped (counted), since neither a
// reward at the end of the response nor a response log-probability exists for it.
using System.Text.Json;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;

namespace TinyLlama.Training.Preferences;

/// <summary>One preference record: for <paramref name="Prompt"/>, <paramref name="Chosen"/> is preferred to <paramref name="Rejected"/>.</summary>
/// <param name="Prompt">The prompt text, exactly as the model sees it (no template is added).</param>
/// <param name="Chosen">The preferred response, which follows the prompt directly.</param>
/// <param name="Rejected">The dispreferred response.</param>
/// <param name="Source">Where the record came from, <c>"file:line"</c>.</param>
public sealed record PreferencePair(string Prompt, string Chosen, string Rejected, string Source);

/// <summary>A tokenised preference pair: both sides as SFT examples whose unmasked labels are the response.</summary>
/// <param name="Chosen">BOS + prompt + chosen + EOS, prompt masked.</param>
/// <param name="Rejected">BOS + prompt + rejected + EOS, prompt masked.</param>
/// <param name="Source">The record's <c>"file:line"</c>.</param>
public sealed record TokenizedPair(SftExample Chosen, SftExample Rejected, string Source);

/// <summary>Reading and tokenising preference-pair files.</summary>
public static class PreferenceData
{
    /// <summary>Reads every record of a JSON Lines or JSON array file.</summary>
    /// <exception cref="FileNotFoundException">No file at <paramref name="path"/>.</exception>
    /// <exception cref="InvalidDataException">A problem in the file, as one line "file:line: field ...".</exception>
    public static List<PreferencePair> Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"preference data file not found: {path}", path);
        return Parse(File.ReadAllBytes(path), path);
    }

    /// <summary>Parses file content; <paramref name="path"/> names it in messages and sources.</summary>
    public static List<PreferencePair> Parse(byte[] content, string path)
    {
        ArgumentNullException.ThrowIfNull(content);
        var pairs = new List<PreferencePair>();
        SftRecordReader.ForEach(content, path, (record, ctx) => pairs.Add(new PreferencePair(
            ctx.RequireString(record, "prompt"), ctx.RequireString(record, "chosen"), ctx.RequireString(record, "rejected"), ctx.Source)));
        return pairs;
    }

    /// <summary>
    /// Tokenises <paramref name="pairs"/> with <paramref name="tokenizer"/> (which needs BOS and EOS pieces),
    /// cutting each side to <paramref name="maxLength"/> tokens and dropping pairs left without a response token.
    /// </summary>
    public static TokenizedPreferences Tokenize(IReadOnlyList<PreferencePair> pairs, LlamaTokenizer tokenizer, int maxLength) =>
        Tokenize(pairs, TextEncoder.From(tokenizer), maxLength);

    internal static TokenizedPreferences Tokenize(IReadOnlyList<PreferencePair> pairs, TextEncoder encoder, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 2);
        var kept = new List<TokenizedPair>(pairs.Count);
        int truncated = 0, dropped = 0;
        foreach (var pair in pairs)
        {
            var chosen = AlpacaTemplate.TokenizeText(encoder, pair.Prompt, pair.Chosen, pair.Source);
            var rejected = AlpacaTemplate.TokenizeText(encoder, pair.Prompt, pair.Rejected, pair.Source);
            if (chosen.Length > maxLength || rejected.Length > maxLength) truncated++;
            chosen = chosen.Truncate(maxLength);
            rejected = rejected.Truncate(maxLength);
            if (chosen.TargetCount == 0 || rejected.TargetCount == 0) dropped++;
            else kept.Add(new TokenizedPair(chosen, rejected, pair.Source));
        }
        return new TokenizedPreferences(kept, pairs.Count, truncated, dropped);
    }

    /// <summary>
    /// Splits pairs into (train, held-out) deterministically for a seed, as <see cref="SftDataset.SplitValidation(IReadOnlyList{SftExample}, double, ulong)"/>
    /// splits records: a random <paramref name="fraction"/> (in [0, 1)) of the records is held out, at least one when it is positive.
    /// </summary>
    public static (IReadOnlyList<TokenizedPair> Train, IReadOnlyList<TokenizedPair> HeldOut) SplitValidation(IReadOnlyList<TokenizedPair> pairs, double fraction, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        var (_, heldOut) = SftDataset.SplitValidation(pairs.Select(p => p.Chosen).ToList(), fraction, seed);
        var held = new HashSet<string>(heldOut.Select(e => e.Source), StringComparer.Ordinal);
        return (pairs.Where(p => !held.Contains(p.Source)).ToList(), pairs.Where(p => held.Contains(p.Source)).ToList());
    }
}

/// <summary>The tokenised pairs of a file and what tokenising did to them.</summary>
/// <param name="Pairs">The pairs kept, in file order.</param>
/// <param name="Records">Records read.</param>
/// <param name="Truncated">Pairs with a side longer than the maximum length (cut to it).</param>
/// <param name="Dropped">Pairs dropped because a side kept no response token after the cut.</param>
public sealed record TokenizedPreferences(IReadOnlyList<TokenizedPair> Pairs, int Records, int Truncated, int Dropped)
{
    /// <summary>One line for logs: "N pairs (R records, T truncated, D dropped)".</summary>
    public string Summary() => $"{Pairs.Count} pairs ({Records} records, {Truncated} truncated, {Dropped} dropped: no response token left)";
}

/// <summary>
/// Endless batches of preference pairs (in file order or shuffled per epoch, as <see cref="SftDataLoader"/>),
/// with the same resumable position.
/// </summary>
public sealed class PreferenceDataLoader
{
    private readonly IReadOnlyList<TokenizedPair> pairs;
    private readonly ExampleOrder order;

    /// <summary>A loader over <paramref name="pairs"/> (not copied) giving <paramref name="batchSize"/> pairs at a time.</summary>
    public PreferenceDataLoader(IReadOnlyList<TokenizedPair> pairs, int batchSize, bool shuffle, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        if (pairs.Count == 0) throw new ArgumentException("the preference data loader needs at least one pair", nameof(pairs));
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        foreach (var p in pairs)
        {
            p.Chosen.Validate();
            p.Rejected.Validate();
            if (p.Chosen.TargetCount == 0 || p.Rejected.TargetCount == 0)
                throw new ArgumentException($"{p.Source}: a preference pair needs a response token on both sides", nameof(pairs));
        }
        this.pairs = pairs;
        BatchSize = batchSize;
        order = new ExampleOrder(pairs.Count, shuffle, seed);
    }

    /// <summary>Pairs per batch.</summary>
    public int BatchSize { get; }

    /// <summary>The pairs, by index.</summary>
    public IReadOnlyList<TokenizedPair> Pairs => pairs;

    /// <summary>The indices (into <see cref="Pairs"/>) of the next batch.</summary>
    public int[] Next()
    {
        var indices = new int[BatchSize];
        for (int i = 0; i < indices.Length; i++) indices[i] = order.Next();
        return indices;
    }

    /// <summary>The position, to save in a checkpoint.</summary>
    public DataLoaderState GetState() => order.GetState();

    /// <summary>Continues from a saved position.</summary>
    public void SetState(DataLoaderState state) => order.SetState(state);
}
