// Judges that need no language model of their own:
//   - ExactMatchJudge, for tasks with known answers (the demo's families, arithmetic, extraction): the answer
//     equal to the question's reference, after trimming, wins; both or neither equal is a tie. It is
//     position-blind, so its two orders always agree.
//   - ScoreJudge, over any scoring function of (question, answer), e.g. a reward model's scalar (Ouyang et
//     al. 2022; the Bradley-Terry model reads a higher reward as the preferred answer): the higher score wins,
//     equal scores tie. A score that is not a finite number is an error, never a silent verdict.
namespace TinyLlama.Training.Judging;

/// <summary>Exact match against each question's reference answer.</summary>
public sealed class ExactMatchJudge : IPairwiseJudge
{
    private readonly Dictionary<string, string> referenceByQuestion = new(StringComparer.Ordinal);

    /// <summary>
    /// A judge for <paramref name="questions"/>, each of which must carry a reference answer; two questions
    /// with the same text and different references are an <see cref="ArgumentException"/>.
    /// </summary>
    public ExactMatchJudge(IEnumerable<JudgeQuestion> questions)
    {
        ArgumentNullException.ThrowIfNull(questions);
        foreach (var q in questions)
        {
            if (q.Reference is null) throw new ArgumentException($"exact-match judging needs a reference answer for question \"{q.Id}\"");
            string reference = q.Reference.Trim();
            if (referenceByQuestion.TryGetValue(q.Question, out var other) && other != reference)
                throw new ArgumentException($"question \"{q.Id}\" has the same text as an earlier question but a different reference answer");
            referenceByQuestion[q.Question] = reference;
        }
    }

    /// <inheritdoc/>
    public string Name => "exact";

    /// <inheritdoc/>
    public Preference Compare(string question, string answerA, string answerB)
    {
        if (!referenceByQuestion.TryGetValue(question, out var reference))
            throw new ArgumentException("exact-match judge: no reference answer for this question");
        bool a = answerA.Trim() == reference, b = answerB.Trim() == reference;
        return a == b ? Preference.Tie : a ? Preference.A : Preference.B;
    }
}

/// <summary>The answer with the higher score wins.</summary>
/// <param name="name">A name for reports.</param>
/// <param name="score">Score of an answer to a question; higher is better.</param>
public sealed class ScoreJudge(string name, Func<string, string, double> score) : IPairwiseJudge
{
    private readonly Func<string, string, double> score = score ?? throw new ArgumentNullException(nameof(score));

    /// <inheritdoc/>
    public string Name { get; } = name ?? throw new ArgumentNullException(nameof(name));

    /// <inheritdoc/>
    public Preference Compare(string question, string answerA, string answerB)
    {
        double a = Score(question, answerA), b = Score(question, answerB);
        return a > b ? Preference.A : b > a ? Preference.B : Preference.Tie;
    }

    private double Score(string question, string answer)
    {
        double s = score(question, answer);
        if (!double.IsFinite(s)) throw new InvalidDataException($"judge {Name} scored an answer {s}; expected a finite number");
        return s;
    }
}
