// Exact-match evaluation of a model on demo items: the Alpaca prompt (BOS + encode(prompt)), greedy
// decoding until EOS or a token budget, the generated ids decoded (EOS dropped) and trimmed, compared
// character for character with the expected answer. No partial credit.
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;

namespace TinyLlama.Training.Demo;

/// <summary>Correct answers per task family.</summary>
public sealed class DemoScore
{
    private readonly Dictionary<string, (int Correct, int Total)> byFamily = new(StringComparer.Ordinal);

    /// <summary>Records one answer.</summary>
    public void Add(string family, bool correct)
    {
        var (c, t) = byFamily.GetValueOrDefault(family);
        byFamily[family] = (c + (correct ? 1 : 0), t + 1);
    }

    /// <summary>(correct, total) for a family; (0, 0) when it has no items.</summary>
    public (int Correct, int Total) Family(string family) => byFamily.GetValueOrDefault(family);

    /// <summary>(correct, total) over every family.</summary>
    public (int Correct, int Total) Overall => (byFamily.Values.Sum(v => v.Correct), byFamily.Values.Sum(v => v.Total));

    /// <summary>Accuracy of a (correct, total) pair, 0 when total is 0.</summary>
    public static double Accuracy((int Correct, int Total) x) => x.Total == 0 ? 0 : (double)x.Correct / x.Total;
}

/// <summary>Asks a model the demo's questions.</summary>
public static class DemoEvaluation
{
    /// <summary>The model's greedy answer to an item, decoded and trimmed.</summary>
    public static string Answer(LlamaForCausalLM model, LlamaTokenizer tokenizer, DemoTask task, int maxTokens)
    {
        var prompt = AlpacaTemplate.EncodePrompt(tokenizer, task.Instruction, task.Input);
        var ids = new List<int>();
        foreach (int id in TextGenerator.Generate(model, prompt, maxTokens, SamplingOptions.Greedy, model.Config.EosTokenIds))
            if (!model.Config.EosTokenIds.Contains(id)) ids.Add(id);
        return tokenizer.Decode(ids).Trim();
    }

    /// <summary>
    /// The model's greedy completion of an item's plain statement ("c a t reversed is"), up to the full
    /// stop that ends a fact sentence (or EOS, or a new line), trimmed: what the model knows, asked in
    /// the words it was pre-trained on.
    /// </summary>
    public static string Complete(LlamaForCausalLM model, LlamaTokenizer tokenizer, DemoTask task, int maxTokens)
    {
        var ids = new List<int>();
        string text = "";
        foreach (int id in TextGenerator.Generate(model, tokenizer.Encode(task.Statement, addBos: true), maxTokens, SamplingOptions.Greedy, model.Config.EosTokenIds))
        {
            if (model.Config.EosTokenIds.Contains(id)) break;
            ids.Add(id);
            text = tokenizer.Decode(ids);
            int end = text.IndexOfAny(['.', '\n']);
            if (end >= 0) return text[..end].Trim();
        }
        return text.Trim();
    }

    /// <summary>
    /// Exact-match score over <paramref name="tasks"/>; <paramref name="onAnswer"/>, if given, sees each
    /// item with the model's answer (for progress displays).
    /// </summary>
    public static DemoScore Evaluate(LlamaForCausalLM model, LlamaTokenizer tokenizer, IReadOnlyList<DemoTask> tasks, int maxTokens,
        Action<DemoTask, string>? onAnswer = null) => Score(model, tasks, task => Answer(model, tokenizer, task, maxTokens), onAnswer);

    /// <summary>Exact-match score of the model's plain-sentence completions (<see cref="Complete"/>) over <paramref name="tasks"/>.</summary>
    public static DemoScore EvaluateCompletion(LlamaForCausalLM model, LlamaTokenizer tokenizer, IReadOnlyList<DemoTask> tasks, int maxTokens) =>
        Score(model, tasks, task => Complete(model, tokenizer, task, maxTokens), null);

    /// <summary>Whether the model's greedy answer to each of <paramref name="tasks"/> is right, in order.</summary>
    public static bool[] Correct(LlamaForCausalLM model, LlamaTokenizer tokenizer, IReadOnlyList<DemoTask> tasks, int maxTokens)
    {
        var correct = new bool[tasks.Count];
        int i = 0;
        Evaluate(model, tokenizer, tasks, maxTokens, (task, answer) => correct[i++] = answer == task.Answer);
        return correct;
    }

    /// <summary>
    /// Compares two models' answers to the same items, paired (McNemar's test): <c>Gained</c> items only the
    /// candidate gets right, <c>Lost</c> items only the baseline does, and whether the candidate is better at the
    /// 5% level: (|gained - lost| - 1)^2 / (gained + lost) &gt; 3.841 (chi-square with one degree of freedom and
    /// continuity correction) with more gained than lost. Items both get right or both get wrong say nothing
    /// about which is better, so 4 gained and 0 lost is a clear win and 40 gained and 36 lost is not.
    /// </summary>
    public static (int Gained, int Lost, bool Better) Compare(IReadOnlyList<bool> baseline, IReadOnlyList<bool> candidate)
    {
        if (baseline.Count != candidate.Count) throw new ArgumentException($"{baseline.Count} baseline answers against {candidate.Count} candidate answers");
        int gained = 0, lost = 0;
        for (int i = 0; i < baseline.Count; i++)
        {
            if (candidate[i] && !baseline[i]) gained++;
            if (baseline[i] && !candidate[i]) lost++;
        }
        double d = Math.Abs(gained - lost) - 1;
        bool better = gained > lost && d * d / (gained + lost) > 3.841;
        return (gained, lost, better);
    }

    private static DemoScore Score(LlamaForCausalLM model, IReadOnlyList<DemoTask> tasks, Func<DemoTask, string> ask, Action<DemoTask, string>? onAnswer)
    {
        bool wasTraining = model.Training;
        model.Eval();
        var score = new DemoScore();
        foreach (var task in tasks)
        {
            string answer = ask(task);
            score.Add(task.Family, answer == task.Answer);
            onAnswer?.Invoke(task, answer);
        }
        model.Train(wasTraining);
        return score;
    }
}
