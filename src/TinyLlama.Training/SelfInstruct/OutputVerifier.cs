// Verifiers for generated records: beyond Self-Instruct (Wang et al. 2022), which keeps any output that
// passes its heuristic filters, a verifier computes the right answer where the task family allows and the
// generator keeps only records whose output it confirms: rejection sampling on generated data, as in
// STaR (Zelikman et al. 2022) and rejection-sampling fine-tuning (Yuan et al. 2023), where only answers that
// check out are trained on.
//
// DemoTaskVerifier knows the demo's five families (Demo/DemoTasks.cs) by their instruction wordings
// (DemoDataset.InstructionWordings, the same lists the demo draws from) and computes each answer in that
// file's formats:
//   arithmetic "47 + 3" -> "50"        reverse  "c a t" -> "t a c"     sort "5 2 8" -> "2 5 8"
//   count      "c a t"  -> "3"         capitals "c a t" -> "C A T"     commas "c a t" -> "c, a, t"
// An instruction it does not know gives null (cannot check). A known instruction whose input is not of the
// family's form (letters one per word, digits one per word, "a + b" or "a - b") gives false: the record is
// not an instance of the task its instruction names, so it cannot be a correct one. Outputs are compared
// after trimming (Alpaca records of the demo carry a leading space, DemoTask.Output).
using System.Globalization;
using System.Text.RegularExpressions;
using TinyLlama.Training.Demo;

namespace TinyLlama.Training.SelfInstruct;

/// <summary>Checks a record's output where it can.</summary>
public interface IOutputVerifier
{
    /// <summary>The name the command line selects it by.</summary>
    string Name { get; }

    /// <summary>True when <paramref name="output"/> is right for the instruction and input, false when wrong, null when this verifier cannot tell.</summary>
    bool? Verify(string instruction, string input, string output);
}

/// <summary>The verifiers the command line knows by name.</summary>
public static class OutputVerifiers
{
    /// <summary>The names <see cref="ByName"/> accepts.</summary>
    public static IReadOnlyList<string> Names { get; } = ["demo"];

    /// <summary>The verifier called <paramref name="name"/>; an <see cref="ArgumentException"/> naming the known ones otherwise.</summary>
    public static IOutputVerifier ByName(string name) => name switch
    {
        "demo" => new DemoTaskVerifier(),
        _ => throw new ArgumentException($"unknown verifier '{name}'; expected one of: {string.Join(", ", Names)}"),
    };
}

/// <summary>Exact answers for the demo's task families (see the file header).</summary>
public sealed partial class DemoTaskVerifier : IOutputVerifier
{
    private static readonly Dictionary<string, string> KindByInstruction = BuildTable();

    /// <inheritdoc/>
    public string Name => "demo";

    /// <summary>The kind of item ("arithmetic", "reverse", "sort", "count", "capitals", "commas") an instruction names, or null.</summary>
    public static string? Kind(string instruction) => KindByInstruction.GetValueOrDefault(instruction.Trim());

    /// <summary>The right answer to a demo instruction for <paramref name="input"/>; null when the instruction is unknown or the input not of its family's form.</summary>
    public static string? Answer(string instruction, string input)
    {
        string? kind = Kind(instruction);
        if (kind is null) return null;
        input = input.Trim();
        if (kind == "arithmetic")
        {
            var m = SumPattern().Match(input);
            if (!m.Success) return null;
            long a = long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), b = long.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture);
            return (m.Groups[2].Value == "+" ? a + b : a - b).ToString(CultureInfo.InvariantCulture);
        }
        if (kind == "sort")
            return DigitsPattern().IsMatch(input) ? string.Join(' ', Items(input).Order()) : null;
        if (!LettersPattern().IsMatch(input)) return null;
        var letters = Items(input);
        return kind switch
        {
            "reverse" => string.Join(' ', letters.Reverse()),
            "count" => letters.Length.ToString(CultureInfo.InvariantCulture),
            "capitals" => string.Join(' ', letters.Select(char.ToUpperInvariant)),
            "commas" => string.Join(", ", letters),
            _ => throw new InvalidOperationException($"no rule for demo kind '{kind}'"),
        };
    }

    /// <inheritdoc/>
    public bool? Verify(string instruction, string input, string output)
    {
        ArgumentNullException.ThrowIfNull(instruction);
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(output);
        if (Kind(instruction) is null) return null;
        return Answer(instruction, input) is string answer && string.Equals(answer, output.Trim(), StringComparison.Ordinal);
    }

    // "c a t" -> ['c', 'a', 't'] (the patterns below have checked one character per word)
    private static char[] Items(string input) => input.Split(' ').Select(w => w[0]).ToArray();

    private static Dictionary<string, string> BuildTable()
    {
        var table = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (kind, wordings) in DemoDataset.InstructionWordings)
            foreach (var wording in wordings) table.Add(wording, kind);
        return table;
    }

    // At most nine digits a side, so the sum fits a long.
    [GeneratedRegex(@"^([0-9]{1,9}) ([+-]) ([0-9]{1,9})$", RegexOptions.CultureInvariant)]
    private static partial Regex SumPattern();

    [GeneratedRegex(@"^[0-9]( [0-9])*$", RegexOptions.CultureInvariant)]
    private static partial Regex DigitsPattern();

    [GeneratedRegex(@"^[a-z]( [a-z])*$", RegexOptions.CultureInvariant)]
    private static partial Regex LettersPattern();
}
