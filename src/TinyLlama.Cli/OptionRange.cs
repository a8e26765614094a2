// Ranges of numeric command-line options. A value outside its option's range is a usage error (exit 2)
// with one line naming the option, the range and the value; NaN is outside every range, and a range
// with an infinite end still asks for a finite number, since no option means anything at infinity.
// Check runs in a verb's action (before any file is read); Range attaches the same check to an option as a
// validator, so it fails at parse time, before the verb runs at all (a value that is not a number at all is
// System.CommandLine's own parse error, "Cannot parse argument ..."). Counts and sizes get a sane maximum
// (MaxCount); sizes whose memory depends on a model are then bounded by CheckMemory, which names the estimate.
using System.CommandLine;
using System.Globalization;

namespace TinyLlama.Cli;

internal static class OptionRange
{
    /// <summary>The upper end of every count or size option whose memory is not otherwise bounded: 2^20.</summary>
    public const int MaxCount = 1 << 20;

    /// <summary>Returns <paramref name="value"/> when it is in [<paramref name="min"/>, <paramref name="max"/>], else a usage error.</summary>
    public static int Check(string option, int value, int min, int max = int.MaxValue)
    {
        if (Error(option, value, min, max) is string error) throw new CliException(error, isUsage: true);
        return value;
    }

    /// <summary>
    /// Returns <paramref name="value"/> when it is finite and in the interval from <paramref name="min"/> to
    /// <paramref name="max"/>, each end included unless its open flag is set; else a usage error.
    /// </summary>
    public static double Check(string option, double value, double min, double max, bool minOpen = false, bool maxOpen = false)
    {
        if (Error(option, value, min, max, minOpen, maxOpen) is string error) throw new CliException(error, isUsage: true);
        return value;
    }

    /// <summary>Checks <paramref name="option"/>'s value against [<paramref name="min"/>, <paramref name="max"/>] at parse time.</summary>
    public static Option<int> Range(this Option<int> option, int min, int max) =>
        Validate(option, token => int.TryParse(token, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) ? Error(Label(option), value, min, max) : null);

    /// <summary>Checks <paramref name="option"/>'s value against an interval at parse time (see <see cref="Check(string, double, double, double, bool, bool)"/>).</summary>
    public static Option<double> Range(this Option<double> option, double min, double max, bool minOpen = false, bool maxOpen = false) =>
        Validate(option, token => double.TryParse(token, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) ? Error(Label(option), value, min, max, minOpen, maxOpen) : null);

    // A token that does not parse is left to System.CommandLine's own error.
    private static Option<T> Validate<T>(Option<T> option, Func<string, string?> error)
    {
        option.Validators.Add(result =>
        {
            if (result.Tokens.Count == 1 && error(result.Tokens[0].Value) is string message) result.AddError(message);
        });
        return option;
    }

    /// <summary>
    /// A usage error when <paramref name="bytes"/>, what <paramref name="what"/> needs at least, is more than
    /// this process can have ("--ctx-size 1000000 needs 37.0 GB or more ..."); <paramref name="hint"/> says what to lower.
    /// </summary>
    public static void CheckMemory(string what, double bytes, string hint)
    {
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (bytes > available)
            throw new CliException(string.Create(CultureInfo.InvariantCulture,
                $"{what} needs {bytes / 1e9:F1} GB or more, over the {available / 1e9:F1} GB available; {hint}"), isUsage: true);
    }

    // "--prompt-tokens (-p)": the name and its short aliases, as the user may have typed either.
    private static string Label(Option option) =>
        option.Aliases.Count == 0 ? option.Name : $"{option.Name} ({string.Join(", ", option.Aliases.Order(StringComparer.Ordinal))})";

    private static string? Error(string option, int value, int min, int max) =>
        value >= min && value <= max ? null
        : max == int.MaxValue ? $"{option} must be an integer >= {min}, got {value}"
        : $"{option} must be an integer in [{min}, {max}], got {value}";

    private static string? Error(string option, double value, double min, double max, bool minOpen, bool maxOpen)
    {
        bool ok = double.IsFinite(value)
            && (minOpen ? value > min : value >= min)
            && (maxOpen ? value < max : value <= max);
        if (ok) return null;
        string Bound(double b) => double.IsInfinity(b) ? (b > 0 ? "inf" : "-inf") : b.ToString(CultureInfo.InvariantCulture);
        string interval = $"{(minOpen ? "(" : "[")}{Bound(min)}, {Bound(max)}{(maxOpen || double.IsInfinity(max) ? ")" : "]")}";
        return $"{option} must be a finite number in {interval}, got {value.ToString(CultureInfo.InvariantCulture)}";
    }
}
