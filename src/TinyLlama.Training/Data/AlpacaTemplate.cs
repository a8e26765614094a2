// The Stanford Alpaca prompt (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT) and its tokenisation:
// ids = BOS + encode(prompt + output) + EOS, one encode call on the concatenated text, and the first
// 1 + len(encode(prompt)) positions masked out of the labels, as Alpaca's preprocess() does. The model
// learns the response and the EOS that ends it. Inference (chat, the demo) must use the same prompt
// text, so it is public here.
using TinyLlama.Tokenizers;

namespace TinyLlama.Training.Data;

/// <summary>The Alpaca instruction prompt, shared by training and inference.</summary>
public static class AlpacaTemplate
{
    private const string WithInputHeader =
        "Below is an instruction that describes a task, paired with an input that provides further context. " +
        "Write a response that appropriately completes the request.\n\n";

    /// <summary>The preamble of the "no input" prompt; chat uses it as the default system text.</summary>
    public const string DefaultPreamble =
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.";

    /// <summary>
    /// The prompt text, ending in <c>"### Response:"</c> (no trailing space: the response follows directly,
    /// as in Alpaca's data). The "with input" template is used when <paramref name="input"/> is non-empty.
    /// A rated record gets its quality marker in front (<see cref="QualityTags"/>).
    /// </summary>
    public static string Prompt(string instruction, string? input = null, SftQuality quality = SftQuality.Unrated)
    {
        ArgumentNullException.ThrowIfNull(instruction);
        string prompt = string.IsNullOrEmpty(input)
            ? Turn(instruction, DefaultPreamble)
            : WithInputHeader + "### Instruction:\n" + instruction + "\n\n### Input:\n" + input + "\n\n### Response:";
        return QualityTags.Apply(quality, prompt);
    }

    /// <summary>
    /// One instruction turn, <c>"### Instruction:\n{instruction}\n\n### Response:"</c>, behind
    /// <c>preamble + "\n\n"</c> when a preamble is given. With <see cref="DefaultPreamble"/> it is
    /// <see cref="Prompt"/>'s "no input" text; chat repeats the turn without the preamble.
    /// </summary>
    public static string Turn(string instruction, string? preamble = null)
    {
        ArgumentNullException.ThrowIfNull(instruction);
        string turn = "### Instruction:\n" + instruction + "\n\n### Response:";
        return preamble is null ? turn : preamble + "\n\n" + turn;
    }

    /// <summary>The ids to feed a model at inference: BOS + encode(prompt). Generation continues with the response.</summary>
    public static int[] EncodePrompt(LlamaTokenizer tokenizer, string instruction, string? input = null, SftQuality quality = SftQuality.Unrated)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        return tokenizer.Encode(Prompt(instruction, input, quality), addBos: true);
    }

    /// <summary>
    /// A training example: BOS + encode(prompt + output) + EOS, labels -100 on the first
    /// 1 + len(encode(prompt)) positions. Not truncated here.
    /// </summary>
    public static SftExample Tokenize(LlamaTokenizer tokenizer, string instruction, string? input, string output,
        SftQuality quality = SftQuality.Unrated, string source = "")
        => Tokenize(TextEncoder.From(tokenizer), instruction, input, output, quality, source);

    internal static SftExample Tokenize(TextEncoder encoder, string instruction, string? input, string output,
        SftQuality quality, string source)
    {
        ArgumentNullException.ThrowIfNull(output);
        return TokenizeText(encoder, Prompt(instruction, input, quality), output, source);
    }

    /// <summary>
    /// The tokenisation every prompt/response example shares: BOS + encode(prompt + response) + EOS, labels
    /// -100 on the first 1 + len(encode(prompt)) positions (preference pairs use it on their raw prompt).
    /// </summary>
    internal static SftExample TokenizeText(TextEncoder encoder, string prompt, string response, string source)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(response);
        int promptLength = 1 + encoder.Encode(prompt).Length;
        int[] body = encoder.Encode(prompt + response);
        var ids = new int[body.Length + 2];
        ids[0] = encoder.BosId;
        body.CopyTo(ids, 1);
        ids[^1] = encoder.EosId;
        // The prompt's tokens are normally a prefix of the full encoding; where a merge crosses the
        // boundary they are not, and the mask still stops at the prompt's own length, as Alpaca's does.
        promptLength = Math.Min(promptLength, ids.Length - 1); // EOS is always a target
        var labels = (int[])ids.Clone();
        Array.Fill(labels, TrainingInfo.IgnoreIndex, 0, promptLength);
        return new SftExample(ids, labels, source);
    }
}
