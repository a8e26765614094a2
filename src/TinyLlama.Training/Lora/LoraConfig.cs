// The hyper-parameters of a LoRA fine-tune (Hu et al., "LoRA: Low-Rank Adaptation of Large Language
// Models", 2021, arXiv:2106.09685): rank r, alpha (the adapter's output is scaled by alpha / r), the
// dropout on the adapter's input, and which of LLaMA's linear layers get an adapter.
//
// Field meanings and target names follow Hugging Face PEFT's LoraConfig (peft/tuners/lora/config.py:
// r, lora_alpha, lora_dropout, target_modules). PEFT matches a target name against the end of each
// module's dotted name, so "q_proj" adapts model.layers.{i}.self_attn.q_proj in every layer; the short
// names "q", "k", ... are accepted here as a convenience and always stored as PEFT writes them.
namespace TinyLlama.Training.Lora;

/// <summary>
/// Which linear layers get a LoRA adapter, and its rank, alpha and dropout.
/// </summary>
/// <param name="Rank">r, the inner dimension of B A (at least 1).</param>
/// <param name="Alpha">lora_alpha; the adapter's output is multiplied by Alpha / Rank.</param>
/// <param name="Dropout">lora_dropout, the probability of zeroing an element of the adapter's input in training, in [0, 1).</param>
/// <param name="TargetModules">
/// Any of q, k, v, o, gate, up, down, short or as PEFT writes them (q_proj, k_proj, v_proj, o_proj,
/// gate_proj, up_proj, down_proj).
/// </param>
public sealed record LoraConfig(int Rank, double Alpha, double Dropout, IReadOnlyList<string> TargetModules)
{
    /// <summary>Every LLaMA linear layer a LoRA adapter can target, in PEFT's names and the model's order.</summary>
    public static IReadOnlyList<string> AllTargets { get; } = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// <summary>s = alpha / r, the factor on the adapter's output.</summary>
    public double Scaling => Alpha / Rank;

    /// <summary>
    /// PEFT's name for a target ("q" or "q_proj" -> "q_proj"); null for a name that is not one of
    /// LLaMA's linear layers.
    /// </summary>
    public static string? CanonicalTarget(string name)
    {
        string full = name.EndsWith("_proj", StringComparison.Ordinal) ? name : name + "_proj";
        return AllTargets.Contains(full, StringComparer.Ordinal) ? full : null;
    }

    /// <summary>The targets in PEFT's names, without duplicates, in the model's order (q, k, v, o, gate, up, down).</summary>
    public IReadOnlyList<string> CanonicalTargets()
    {
        Validate();
        var set = TargetModules.Select(t => CanonicalTarget(t)!).ToHashSet(StringComparer.Ordinal);
        return AllTargets.Where(set.Contains).ToList();
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field.</summary>
    public void Validate()
    {
        if (Rank < 1) throw new ArgumentException($"LoRA rank must be at least 1, got {Rank}");
        if (!double.IsFinite(Alpha)) throw new ArgumentException($"LoRA alpha must be finite, got {Alpha}");
        if (!(Dropout >= 0 && Dropout < 1)) throw new ArgumentException($"LoRA dropout must be in [0, 1), got {Dropout}");
        if (TargetModules is null || TargetModules.Count == 0) throw new ArgumentException("LoRA target_modules is empty");
        foreach (var t in TargetModules)
            if (t is null || CanonicalTarget(t) is null)
                throw new ArgumentException($"unknown LoRA target module {TinyLlama.Formats.MessageText.Quote(t)} (expected one of {string.Join(", ", AllTargets)}, or q, k, v, o, gate, up, down)");
    }
}
