// `--threads N`, accepted by every verb (a recursive root option, like --device): how many threads the
// CPU backend computes with (llama.cpp's -t). Program sets CpuThreads.Count from it before the verb
// runs and puts the previous count back afterwards; without it the count stays at one per core.
using System.CommandLine;
using TinyLlama.Backends.Cpu;

namespace TinyLlama.Cli;

internal static class ThreadsOption
{
    public const string Name = "--threads";

    public static Option<int?> Create()
    {
        var option = new Option<int?>(Name)
        {
            Description = $"Threads the CPU backend computes with, 1 to {CpuThreads.Max} (default: all cores, {Environment.ProcessorCount} here)",
            Recursive = true,
        };
        option.Validators.Add(result =>
        {
            // A value that is not an integer is already a parse error ("Cannot parse argument ...").
            if (result.Tokens.Count == 1 && int.TryParse(result.Tokens[0].Value, out int n) && n is < 1 or > CpuThreads.Max)
                result.AddError($"{Name}: expected a thread count from 1 to {CpuThreads.Max}, got {n}");
        });
        return option;
    }

    /// <summary>Sets CpuThreads.Count when --threads was given; returns the count to restore afterwards, or null.</summary>
    public static int? Apply(ParseResult parse)
    {
        int? n = parse.GetValue<int?>(Name);
        if (n is null) return null;
        int previous = CpuThreads.Count;
        CpuThreads.Count = n.Value;
        return previous;
    }
}
