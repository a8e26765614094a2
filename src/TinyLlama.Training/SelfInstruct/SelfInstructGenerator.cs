// Self-Instruct data generation (Wang et al. 2022; Stanford Alpaca's variant writes instruction, input and
// output in one pass) with a model of this engine, in two modes.
//
// NewInstructions, the paper's loop: each attempt samples a few in-context tasks (mostly seeds, up to
// GeneratedExamples from the records already kept, as the paper mixes 6 human and 2 machine tasks), builds
// SelfInstructPrompt's numbered list, and samples the model's continuation (temperature / top-p, a fresh
// seed per attempt drawn from the run's seed) until end of sequence, the start of another task, or the token
// budget. The continuation is parsed into a record and sent through SelfInstructFilter. When the prompt and
// the budget exceed the model's context, in-context tasks are dropped from the front until they fit.
//
// NewInputs, for a tiny instruction-tuned model such as the demo's, which has only ever seen the Alpaca
// template and five task families and cannot write a numbered list of new tasks: each attempt picks a seed
// record, writes a new input of the same shape (InputMutator: every letter, digit or capital replaced by a
// random one of its class, other characters kept, and a list of one-character words sometimes one word
// longer or shorter, so "c a t" may become "q r x" or "q r x b", "47 + 3" becomes "82 + 6"), and asks the
// model the seed's instruction for that input through AlpacaTemplate, greedily, as the demo evaluates it.
// The record is (seed instruction, new input, the model's answer), with the seed's leading-space
// convention for outputs. The model supplies the answers; a verifier (DemoTaskVerifier) then keeps only the
// right ones, so the data grow with correct new items of the families, including inputs the model gets
// right only sometimes (longer words, carries): rejection sampling. Without a verifier every well-formed
// answer is kept, right or wrong. The instruction filters (length, blacklist, ROUGE-L) do not apply, since
// the instruction is a seed's; duplicates (same instruction and input as a seed or a kept record) do.
//
// Both modes stop when Count records are kept or after MaxAttempts candidates. Every random choice comes
// from Seed, so a run is repeatable.
using System.Text;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;

namespace TinyLlama.Training.SelfInstruct;

/// <summary>What the model is asked to write.</summary>
public enum SelfInstructMode
{
    /// <summary>New tasks (instruction, input, output) from a few-shot list of tasks: Self-Instruct proper.</summary>
    NewInstructions,
    /// <summary>New inputs for the seeds' instructions, answered by the model through the Alpaca template.</summary>
    NewInputs,
}

/// <summary>Settings of a Self-Instruct run.</summary>
public sealed record SelfInstructOptions
{
    /// <summary>Records to keep.</summary>
    public required int Count { get; init; }
    /// <summary>What the model writes.</summary>
    public SelfInstructMode Mode { get; init; } = SelfInstructMode.NewInstructions;
    /// <summary>Candidates to try at most before stopping short of <see cref="Count"/>.</summary>
    public required int MaxAttempts { get; init; }
    /// <summary>In-context tasks per prompt (NewInstructions).</summary>
    public int Examples { get; init; } = 4;
    /// <summary>Of those, at most this many from the records already kept (NewInstructions).</summary>
    public int GeneratedExamples { get; init; } = 1;
    /// <summary>Tokens the model may write per candidate.</summary>
    public int MaxNewTokens { get; init; } = 128;
    /// <summary>Temperature and top-p of NewInstructions' sampling (its seed is replaced per attempt).</summary>
    public double Temperature { get; init; } = 1.0;
    /// <summary>Nucleus threshold of NewInstructions' sampling.</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Seed of every random choice.</summary>
    public ulong Seed { get; init; }
    /// <summary>The filters.</summary>
    public SelfInstructFilterOptions Filters { get; init; } = new();
    /// <summary>Keep only records this verifier confirms; null keeps outputs unchecked.</summary>
    public IOutputVerifier? Verifier { get; init; }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first bad setting.</summary>
    public void Validate()
    {
        if (Count < 1) throw new ArgumentException($"count must be >= 1, got {Count}");
        if (MaxAttempts < 1) throw new ArgumentException($"max attempts must be >= 1, got {MaxAttempts}");
        if (Examples < 1) throw new ArgumentException($"examples must be >= 1, got {Examples}");
        if (GeneratedExamples < 0 || GeneratedExamples > Examples) throw new ArgumentException($"generated examples must be in [0, {Examples}], got {GeneratedExamples}");
        if (MaxNewTokens < 1) throw new ArgumentException($"max new tokens must be >= 1, got {MaxNewTokens}");
        new SamplingOptions(Temperature, 0, TopP).Validate();
        (Filters ?? throw new ArgumentException("filters must be given")).Validate();
    }
}

/// <summary>The kept records and the filters' counts.</summary>
public sealed record SelfInstructResult(IReadOnlyList<InstructionRecord> Records, SelfInstructReport Report);

/// <summary>
/// A model continuing a prompt: the text it wrote and whether it stopped by itself (end of sequence, or
/// <paramref name="stop"/> returned true) rather than at the budget.
/// </summary>
public delegate (string Text, bool Ended) TextCompletion(string prompt, int maxNewTokens, SamplingOptions sampling, Func<string, bool>? stop);

/// <summary>Runs Self-Instruct (see the file header).</summary>
public static class SelfInstructGenerator
{
    /// <summary>Generates with <paramref name="model"/> and <paramref name="tokenizer"/>; <paramref name="onCandidate"/> sees each candidate's verdict.</summary>
    public static SelfInstructResult Run(LlamaForCausalLM model, LlamaTokenizer tokenizer, IReadOnlyList<InstructionRecord> seeds, SelfInstructOptions options,
        Action<CandidateVerdict, InstructionRecord?>? onCandidate = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        bool wasTraining = model.Training;
        model.Eval();
        int context = model.Config.MaxPositionEmbeddings;
        bool Fits(string prompt) => 1 + tokenizer.Encode(prompt).Length + options.MaxNewTokens <= context;
        try { return Run(ModelCompletion(model, tokenizer), seeds, options, onCandidate, Fits); }
        finally { model.Train(wasTraining); }
    }

    /// <summary>
    /// Generates with any <paramref name="complete"/> (tests script it). <paramref name="fits"/>, when given, says
    /// whether a NewInstructions prompt fits the model's context with its token budget; while it does not, the
    /// prompt loses its first in-context task (one is always kept).
    /// </summary>
    public static SelfInstructResult Run(TextCompletion complete, IReadOnlyList<InstructionRecord> seeds, SelfInstructOptions options,
        Action<CandidateVerdict, InstructionRecord?>? onCandidate = null, Func<string, bool>? fits = null)
    {
        ArgumentNullException.ThrowIfNull(complete);
        ArgumentNullException.ThrowIfNull(seeds);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (seeds.Count == 0) throw new ArgumentException("self-instruct needs at least one seed task");
        var filterOptions = options.Mode == SelfInstructMode.NewInputs ? options.Filters with { CheckInstruction = false } : options.Filters;
        var filter = new SelfInstructFilter(filterOptions, options.Verifier, seeds);
        var kept = new List<InstructionRecord>();
        var rng = new Generator(options.Seed);
        for (int attempt = 0; attempt < options.MaxAttempts && kept.Count < options.Count; attempt++)
        {
            var candidate = options.Mode == SelfInstructMode.NewInputs
                ? NewInput(complete, seeds, options, rng)
                : NewInstruction(complete, seeds, kept, options, rng, fits);
            var verdict = filter.Consider(candidate);
            if (verdict == CandidateVerdict.Kept) kept.Add(candidate!);
            onCandidate?.Invoke(verdict, candidate);
        }
        return new SelfInstructResult(kept, filter.Report);
    }

    private static InstructionRecord? NewInstruction(TextCompletion complete, IReadOnlyList<InstructionRecord> seeds, List<InstructionRecord> kept,
        SelfInstructOptions options, Generator rng, Func<string, bool>? fits)
    {
        int fromKept = Math.Min(options.GeneratedExamples, kept.Count);
        int fromSeeds = Math.Min(options.Examples - fromKept, seeds.Count);
        var examples = new List<InstructionRecord>();
        foreach (int i in Sample(seeds.Count, fromSeeds, rng)) examples.Add(seeds[i]);
        foreach (int i in Sample(kept.Count, fromKept, rng)) examples.Add(kept[i]);
        string prompt = SelfInstructPrompt.Build(examples);
        while (examples.Count > 1 && fits is not null && !fits(prompt))
        {
            examples.RemoveAt(0);
            prompt = SelfInstructPrompt.Build(examples);
        }
        var sampling = new SamplingOptions(options.Temperature, 0, options.TopP, 1.0, rng.NextUInt64());
        var (text, ended) = complete(prompt, options.MaxNewTokens, sampling, SelfInstructPrompt.IsComplete);
        return SelfInstructPrompt.Parse(text, ended, out _);
    }

    private static InstructionRecord? NewInput(TextCompletion complete, IReadOnlyList<InstructionRecord> seeds, SelfInstructOptions options, Generator rng)
    {
        var seed = seeds[rng.NextInt(seeds.Count)];
        string input = InputMutator.Mutate(seed.Input, rng);
        var (text, ended) = complete(AlpacaTemplate.Prompt(seed.Instruction, input), options.MaxNewTokens, SamplingOptions.Greedy, null);
        string answer = text.Trim();
        if (!ended || answer.Length == 0) return null;   // cut off, or nothing said
        string output = seed.Output.StartsWith(' ') ? " " + answer : answer;
        return new InstructionRecord(seed.Instruction, input, output);
    }

    // k distinct indices of [0, n) in random order (partial Fisher-Yates).
    private static int[] Sample(int n, int k, Generator rng)
    {
        var order = Enumerable.Range(0, n).ToArray();
        for (int i = 0; i < k; i++)
        {
            int j = i + rng.NextInt(n - i);
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order[..k];
    }

    /// <summary>
    /// The model as a <see cref="TextCompletion"/>: BOS + encode(prompt), sampled until EOS, the stop test or
    /// the budget (cut to the context). A prompt that leaves no room in the context is an <see cref="ArgumentException"/>.
    /// </summary>
    private static TextCompletion ModelCompletion(LlamaForCausalLM model, LlamaTokenizer tokenizer) =>
        (prompt, maxNewTokens, sampling, stop) =>
        {
            var ids = tokenizer.Encode(prompt, addBos: true);
            int room = model.Config.MaxPositionEmbeddings - ids.Length;
            if (room < 1)
                throw new ArgumentException($"the self-instruct prompt is {ids.Length} tokens, more than the model's context of {model.Config.MaxPositionEmbeddings} leaves room for");
            var eos = model.Config.EosTokenIds;
            var decoder = tokenizer.CreateStreamDecoder();
            var text = new StringBuilder();
            foreach (int id in TextGenerator.Generate(model, ids, Math.Min(maxNewTokens, room), sampling, eos))
            {
                if (eos.Contains(id)) return (text.Append(decoder.Flush()).ToString(), true);
                text.Append(decoder.Push(id));
                if (stop is not null && stop(text.ToString())) return (text.ToString(), true);
            }
            return (text.Append(decoder.Flush()).ToString(), false);
        };

}

/// <summary>New inputs shaped like a seed's (NewInputs mode; see <see cref="SelfInstructGenerator"/>'s file header).</summary>
public static class InputMutator
{
    /// <summary>
    /// <paramref name="input"/> with every lowercase letter, uppercase letter and digit replaced by a random one
    /// of its class (a number's first digit stays non-zero when it was), other characters kept; an input of
    /// single-character words separated by spaces also gains or loses one word a third of the time each
    /// (never below two words).
    /// </summary>
    public static string Mutate(string input, Generator rng)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(rng);
        string text = input.Trim();
        var words = text.Split(' ');
        if (text.Length > 0 && words.All(w => w.Length == 1))
        {
            var list = words.ToList();
            int change = rng.NextInt(3);
            if (change == 1) list.Insert(rng.NextInt(list.Count + 1), list[rng.NextInt(list.Count)]);
            else if (change == 2 && list.Count > 2) list.RemoveAt(rng.NextInt(list.Count));
            text = string.Join(' ', list);
        }
        var sb = new StringBuilder(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            bool numberStart = (i == 0 || !char.IsAsciiDigit(text[i - 1])) && i + 1 < text.Length && char.IsAsciiDigit(text[i + 1]);
            sb.Append(c switch
            {
                >= 'a' and <= 'z' => (char)('a' + rng.NextInt(26)),
                >= 'A' and <= 'Z' => (char)('A' + rng.NextInt(26)),
                >= '0' and <= '9' when numberStart && c != '0' => (char)('1' + rng.NextInt(9)),
                >= '0' and <= '9' => (char)('0' + rng.NextInt(10)),
                _ => c,
            });
        }
        return sb.ToString();
    }
}
