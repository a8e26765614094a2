// ROUGE-L (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries", section 3.1): the longest
// common subsequence (LCS) of two token sequences as an F-measure,
//   R = LCS / |target|,  P = LCS / |prediction|,  F = (1 + b^2) R P / (R + b^2 P)  with b = 1,
// which is 0 when either side has no tokens. Tokens are those of Google's `rouge_score` package with its
// default tokenizer (no stemming): the text lower-cased, every run of characters other than a-z and 0-9
// replaced by a space, split on spaces. That is the score Self-Instruct (Wang et al. 2022) and Stanford
// Alpaca use to drop a new instruction whose ROUGE-L against any instruction already in the pool is 0.7 or more.
//
// The LCS is the textbook dynamic programme over an (n+1) x (m+1) table, kept as two rows of the shorter
// side: O(n m) time, O(min(n, m)) memory.
using System.Text;

namespace TinyLlama.Training.SelfInstruct;

/// <summary>ROUGE-L F-measure between texts, with rouge_score's default tokenizer.</summary>
public static class RougeL
{
    /// <summary>rouge_score's tokens: lower case, runs of characters other than a-z and 0-9 as separators.</summary>
    public static string[] Tokenize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var tokens = new List<string>();
        var current = new StringBuilder();
        foreach (char c in text.ToLowerInvariant())
        {
            if (c is >= 'a' and <= 'z' or >= '0' and <= '9') current.Append(c);
            else if (current.Length > 0)
            {
                tokens.Add(current.ToString());
                current.Clear();
            }
        }
        if (current.Length > 0) tokens.Add(current.ToString());
        return [.. tokens];
    }

    /// <summary>The ROUGE-L F-measure (b = 1) of <paramref name="prediction"/> against <paramref name="target"/>, in [0, 1].</summary>
    public static double FMeasure(string prediction, string target) => FMeasure(Tokenize(prediction), Tokenize(target));

    /// <summary>The ROUGE-L F-measure (b = 1) of two token sequences; 0 when either is empty.</summary>
    public static double FMeasure(ReadOnlySpan<string> prediction, ReadOnlySpan<string> target)
    {
        if (prediction.IsEmpty || target.IsEmpty) return 0;
        int lcs = LcsLength(prediction, target);
        if (lcs == 0) return 0;
        double precision = (double)lcs / prediction.Length, recall = (double)lcs / target.Length;
        return 2 * precision * recall / (precision + recall);
    }

    /// <summary>Length of the longest common subsequence of <paramref name="a"/> and <paramref name="b"/> (ordinal token equality).</summary>
    public static int LcsLength(ReadOnlySpan<string> a, ReadOnlySpan<string> b)
    {
        if (a.Length < b.Length) { var t = a; a = b; b = t; }   // rows over the shorter side
        // previous[j] = LCS(a[..i], b[..j]), current[j] = LCS(a[..i+1], b[..j])
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (int i = 0; i < a.Length; i++)
        {
            for (int j = 0; j < b.Length; j++)
                current[j + 1] = string.Equals(a[i], b[j], StringComparison.Ordinal)
                    ? previous[j] + 1
                    : Math.Max(previous[j + 1], current[j]);
            (previous, current) = (current, previous);
        }
        return previous[b.Length];
    }
}

/// <summary>
/// Texts already accepted (tokenised once), and the highest ROUGE-L of a new text against any of them:
/// Self-Instruct's similarity filter.
/// </summary>
public sealed class RougeLPool
{
    private readonly List<string[]> entries = [];

    /// <summary>Number of texts in the pool.</summary>
    public int Count => entries.Count;

    /// <summary>Adds a text.</summary>
    public void Add(string text) => entries.Add(RougeL.Tokenize(text));

    /// <summary>The largest ROUGE-L F-measure of <paramref name="text"/> against the pool's texts; 0 for an empty pool.</summary>
    public double MaxFMeasure(string text)
    {
        var tokens = RougeL.Tokenize(text);
        double best = 0;
        foreach (var entry in entries)
        {
            best = Math.Max(best, RougeL.FMeasure(tokens, entry));
            if (best >= 1) break;
        }
        return best;
    }
}
