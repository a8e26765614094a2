// One tokenised supervised fine-tuning sequence and the label convention every part of the SFT data
// pipeline shares: labels are the input ids themselves where the model should learn to produce the
// token, and TrainingInfo.IgnoreIndex (-100, PyTorch's cross_entropy default) where it should not
// (prompts, system lines, user turns). This is the convention of Stanford Alpaca's train.py and
// FastChat's train.py: the loss is ordinary next-token cross-entropy over the unmasked positions only.
using TinyLlama.Tokenizers;

namespace TinyLlama.Training.Data;

/// <summary>
/// One tokenised training sequence. <c>Labels[i] == InputIds[i]</c> where position <c>i</c> is a
/// prediction target, else <see cref="TrainingInfo.IgnoreIndex"/> (-100). The model predicts token
/// <c>i</c> from tokens <c>&lt; i</c>, so the trainer feeds <c>InputIds[..^1]</c> and scores against
/// <c>Labels[1..]</c> (<see cref="SftDataLoader"/> does that shift when it builds a batch).
/// </summary>
/// <param name="InputIds">Token ids, starting with BOS.</param>
/// <param name="Labels">Same length as <paramref name="InputIds"/>: the id, or -100 where masked.</param>
/// <param name="Source">Where the record came from, <c>"file:line"</c>; every piece of a split conversation shares it.</param>
public sealed record SftExample(int[] InputIds, int[] Labels, string Source)
{
    /// <summary>Number of tokens.</summary>
    public int Length => InputIds.Length;

    /// <summary>Number of positions that are prediction targets (labels other than -100).</summary>
    public int TargetCount
    {
        get
        {
            int n = 0;
            foreach (int label in Labels) if (label != TrainingInfo.IgnoreIndex) n++;
            return n;
        }
    }

    /// <summary>The first <paramref name="maxLength"/> tokens (this example itself when it is no longer).</summary>
    public SftExample Truncate(int maxLength)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 1);
        return InputIds.Length <= maxLength ? this : this with { InputIds = InputIds[..maxLength], Labels = Labels[..maxLength] };
    }

    /// <summary>
    /// Throws when the example breaks the label convention: lengths differ, or a label is neither -100
    /// nor the id at its position. Cheap (one pass), so the loader checks every example once.
    /// </summary>
    public void Validate()
    {
        if (InputIds is null || Labels is null) throw new ArgumentException($"{Source}: example has null ids or labels");
        if (InputIds.Length != Labels.Length)
            throw new ArgumentException($"{Source}: {InputIds.Length} input ids but {Labels.Length} labels");
        for (int i = 0; i < Labels.Length; i++)
            if (Labels[i] != TrainingInfo.IgnoreIndex && Labels[i] != InputIds[i])
                throw new ArgumentException($"{Source}: label {Labels[i]} at position {i} is neither {TrainingInfo.IgnoreIndex} nor the input id {InputIds[i]}");
    }
}

/// <summary>
/// The three things the templates need from a tokenizer. The data code goes through this instead of
/// <see cref="LlamaTokenizer"/> directly so the tests can also run with a tiny character tokenizer
/// when the reference tokenizer.model is not available.
/// </summary>
internal sealed record TextEncoder(Func<string, int[]> Encode, int BosId, int EosId)
{
    public static TextEncoder From(LlamaTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        // SFT data needs BOS and EOS pieces: a tokenizer without one is an error naming its file.
        return new TextEncoder(text => tokenizer.Encode(text), tokenizer.RequireBosId(), tokenizer.RequireEosId());
    }
}
