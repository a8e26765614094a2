// Ranges of numeric command-line options. A value outside its option's range is a usage error (exit 2)
// with one line naming the option, the range and the value; NaN is outside every range, and a range
// with an infinite end still asks for a finite number, since no option means anything at infinity.
using System.Globalization;

namespace TinyLlama.Cli;

internal static class OptionRange
{
    /// <summary>Returns <paramref name="value"/> when it is in [<paramref name="min"/>, <paramref name="max"/>], else a usage error.</summary>
    public static int Check(string option, int value, int min, int max = int.MaxValue)
    {
        if (value < min || value > max)
            throw new CliException(max == int.MaxValue
                ? $"{option} must be an integer >= {min}, got {value}"
                : $"{option} must be an integer in [{min}, {max}], got {value}", isUsage: true);
        return value;
    }

    /// <summary>
    /// Returns <paramref name="value"/> when it is finite and in the interval from <paramref name="min"/> to
    /// <paramref name="max"/>, each end included unless its open flag is set; else a usage error.
    /// </summary>
    public static double Check(string option, double value, double min, double max, bool minOpen = false, bool maxOpen = false)
    {
        bool ok = double.IsFinite(value)
            && (minOpen ? value > min : value >= min)
            && (maxOpen ? value < max : value <= max);
        if (!ok)
        {
            string Bound(double b) => double.IsInfinity(b) ? (b > 0 ? "inf" : "-inf") : b.ToString(CultureInfo.InvariantCulture);
            string interval = $"{(minOpen ? "(" : "[")}{Bound(min)}, {Bound(max)}{(maxOpen || double.IsInfinity(max) ? ")" : "]")}";
            throw new CliException($"{option} must be a finite number in {interval}, got {value.ToString(CultureInfo.InvariantCulture)}", isUsage: true);
        }
        return value;
    }
}
