// Pairwise comparison of two models' answers by a judge, with the position swap of Vicuna's evaluation and
// MT-bench (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", section 3.4):
// judges favour the first position, so every pair is judged twice, (A, B) and then (B, A), and a verdict
// counts only when both orders agree; otherwise, or when either order is a tie, the question is a tie.
// A judge that always prefers whichever answer comes first thus yields only ties.
//
// "Win" is always from A's side: A better in both orders.
namespace TinyLlama.Training.Judging;

/// <summary>A judge's preference between the two answers it was shown, in the order shown.</summary>
public enum Preference
{
    /// <summary>The first answer is better.</summary>
    A,
    /// <summary>The second answer is better.</summary>
    B,
    /// <summary>Neither is better.</summary>
    Tie,
}

/// <summary>Compares two answers to a question.</summary>
public interface IPairwiseJudge
{
    /// <summary>A name for reports.</summary>
    string Name { get; }

    /// <summary>Which of <paramref name="answerA"/> (shown first) and <paramref name="answerB"/> (second) answers <paramref name="question"/> better.</summary>
    Preference Compare(string question, string answerA, string answerB);
}

/// <summary>One question to judge: its id, text and, for exact-match judging, the reference answer.</summary>
public sealed record JudgeQuestion(string Id, string Question, string? Reference = null);

/// <summary>One question's judgement.</summary>
/// <param name="Id">The question's id.</param>
/// <param name="First">The judge's preference with A shown first.</param>
/// <param name="Swapped">The judge's preference with B shown first, turned back into A/B terms.</param>
/// <param name="Verdict"><paramref name="First"/> when both orders agree, else <see cref="Preference.Tie"/>.</param>
public sealed record PairwiseVerdict(string Id, Preference First, Preference Swapped, Preference Verdict)
{
    /// <summary>True when the two orders disagree (the verdict is then a tie).</summary>
    public bool Inconsistent => First != Swapped;
}

/// <summary>Per-question verdicts and their counts from A's side.</summary>
public sealed record PairwiseResult(IReadOnlyList<PairwiseVerdict> Verdicts)
{
    /// <summary>Questions where A is better in both orders.</summary>
    public int Wins => Verdicts.Count(v => v.Verdict == Preference.A);
    /// <summary>Questions with no agreed winner.</summary>
    public int Ties => Verdicts.Count(v => v.Verdict == Preference.Tie);
    /// <summary>Questions where B is better in both orders.</summary>
    public int Losses => Verdicts.Count(v => v.Verdict == Preference.B);
    /// <summary>Of the ties, those where the two orders disagreed.</summary>
    public int Inconsistent => Verdicts.Count(v => v.Inconsistent);
}

/// <summary>Runs a judge over two sets of answers with the position swap.</summary>
public static class PairwiseJudging
{
    /// <summary>
    /// Judges, for each question in order, <paramref name="answersA"/>[id] against <paramref name="answersB"/>[id]
    /// twice, positions swapped the second time. A question without an answer in either set is an <see cref="ArgumentException"/>.
    /// </summary>
    public static PairwiseResult Run(IPairwiseJudge judge, IReadOnlyList<JudgeQuestion> questions,
        IReadOnlyDictionary<string, string> answersA, IReadOnlyDictionary<string, string> answersB)
    {
        ArgumentNullException.ThrowIfNull(judge);
        ArgumentNullException.ThrowIfNull(questions);
        ArgumentNullException.ThrowIfNull(answersA);
        ArgumentNullException.ThrowIfNull(answersB);
        var verdicts = new List<PairwiseVerdict>(questions.Count);
        foreach (var q in questions)
        {
            if (!answersA.TryGetValue(q.Id, out var a)) throw new ArgumentException($"answers A have no answer for question \"{q.Id}\"");
            if (!answersB.TryGetValue(q.Id, out var b)) throw new ArgumentException($"answers B have no answer for question \"{q.Id}\"");
            verdicts.Add(Judge(judge, q, a, b));
        }
        return new PairwiseResult(verdicts);
    }

    /// <summary>One question judged in both orders.</summary>
    public static PairwiseVerdict Judge(IPairwiseJudge judge, JudgeQuestion question, string answerA, string answerB)
    {
        var first = judge.Compare(question.Question, answerA, answerB);
        var swapped = Flip(judge.Compare(question.Question, answerB, answerA));
        return new PairwiseVerdict(question.Id, first, swapped, first == swapped ? first : Preference.Tie);
    }

    /// <summary>A preference with the positions exchanged: A becomes B and B becomes A.</summary>
    public static Preference Flip(Preference p) => p switch
    {
        Preference.A => Preference.B,
        Preference.B => Preference.A,
        _ => Preference.Tie,
    };
}
