// Preference pairs for the demo's tasks, mined from the model itself (the recipe of ColossalChat's and
// StackLLaMA's preference stage, with a verifier standing in for the human raters, and on-policy as in
// iterative DPO): each training prompt is answered greedily, as evaluation answers it; where that answer is
// wrong, the prompt is answered again several times by sampling at a temperature, and if a sample is right the
// prompt gives one pair, chosen = the right sample, rejected = the greedy mistake. Prompts answered right
// greedily give no pair, nor do prompts no sample gets right.
//
// Why only greedy mistakes: the instruction-tuned model answers ~98% of the training prompts right greedily.
// Pairing its right greedy answers with wrong samples drawn at temperature 1 (an earlier version of this file)
// taught DPO to push down answers greedy decoding never gives, and held-out exact match fell (seed 0: 196/200
// before, 188-194 after, with or without an NLL term); the mistakes greedy decoding does make are what DPO has to move.
//
// Responses follow the Alpaca output convention (a leading space, DemoTask.Output), so a pair's sequences
// tokenise exactly as the instruction-tuning records did.
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;
using TinyLlama.Training.Preferences;

namespace TinyLlama.Training.Demo;

/// <summary>What a mining run found.</summary>
/// <param name="Pairs">One pair per prompt answered wrong greedily and right by a sample.</param>
/// <param name="Prompts">Prompts asked.</param>
/// <param name="Answers">Answers generated (greedy and sampled).</param>
/// <param name="GreedyRight">Prompts whose greedy answer was right (no pair).</param>
/// <param name="NeverRight">Prompts answered wrong greedily and by every sample (no pair).</param>
public sealed record DemoPreferenceMining(IReadOnlyList<PreferencePair> Pairs, int Prompts, int Answers, int GreedyRight, int NeverRight);

/// <summary>Mines preference pairs for demo tasks from a model's own sampled answers.</summary>
public static class DemoPreferencePairs
{
    /// <summary>
    /// Asks <paramref name="model"/> each task <paramref name="samples"/> times at <paramref name="temperature"/>
    /// (seeds drawn from <paramref name="seed"/>, so a run is repeatable) and pairs a right answer with a wrong one.
    /// </summary>
    public static DemoPreferenceMining Mine(LlamaForCausalLM model, LlamaTokenizer tokenizer, IReadOnlyList<DemoTask> tasks,
        int samples, double temperature, ulong seed, int maxTokens)
    {
        if (!(temperature > 0)) throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "sampling needs a temperature > 0");
        bool wasTraining = model.Training;
        model.Eval();
        var eos = model.Config.EosTokenIds;
        try
        {
            return Mine(tasks, samples, (task, sample) =>
            {
                var prompt = AlpacaTemplate.EncodePrompt(tokenizer, task.Instruction, task.Input);
                var options = sample % (ulong)samples == 0 ? SamplingOptions.Greedy : new SamplingOptions(Temperature: temperature, Seed: seed * 1_000_003UL + sample + 1);
                var ids = TextGenerator.Generate(model, prompt, maxTokens, options, eos).Where(id => !eos.Contains(id)).ToList();
                return tokenizer.Decode(ids).Trim();
            });
        }
        finally
        {
            model.Train(wasTraining);
        }
    }

    /// <summary>
    /// The pairing rule over any answerer: <paramref name="answer"/>(task, n) is answer n (n = task index x samples +
    /// k, k = 0 the greedy answer, k &gt; 0 samples, asked only while no right answer came), trimmed.
    /// </summary>
    public static DemoPreferenceMining Mine(IReadOnlyList<DemoTask> tasks, int samples, Func<DemoTask, ulong, string> answer)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(samples, 2);
        var pairs = new List<PreferencePair>();
        int answers = 0, greedyRight = 0, neverRight = 0;
        for (int i = 0; i < tasks.Count; i++)
        {
            var task = tasks[i];
            ulong first = (ulong)i * (ulong)samples;
            string greedy = answer(task, first);
            answers++;
            if (greedy == task.Answer) { greedyRight++; continue; }
            string? right = null;
            for (int k = 1; k < samples && right is null; k++)
            {
                answers++;
                if (answer(task, first + (ulong)k) == task.Answer) right = task.Answer;
            }
            if (right is null) { neverRight++; continue; }
            pairs.Add(new PreferencePair(AlpacaTemplate.Prompt(task.Instruction, task.Input), " " + right, " " + greedy, $"{task.Family} {task.Item}"));
        }
        return new DemoPreferenceMining(pairs, tasks.Count, answers, greedyRight, neverRight);
    }
}
