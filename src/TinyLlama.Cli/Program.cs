// Entry point of the `tinyllama` program: builds the verb tree, turns parse errors into one line and
// exit code 2, and turns expected failures (bad files, bad values) into one line and exit code 1.
using System.CommandLine;
using TinyLlama.Cli.Commands;

namespace TinyLlama.Cli;

public static class Program
{
    public static int Main(string[] args) => Run(args, Console.Out, Console.Error);

    /// <summary>
    /// Runs the CLI with the given streams (tests call this directly). <paramref name="stdin"/> replaces
    /// the console's input (verbs that read it then behave as with redirected input).
    /// </summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, TextReader? stdin = null)
    {
        var root = new RootCommand("TinyLlama: tensors, autograd, LLaMA models and fine-tuning in pure C#.");
        root.Options.Add(DeviceOption.Create());
        root.Options.Add(ThreadsOption.Create());
        root.Options.Add(ActivationsOption.Create());
        root.Subcommands.Add(BenchCommand.Create());
        root.Subcommands.Add(TokenizeCommand.Create());
        root.Subcommands.Add(ModelCommands.CreateInfo());
        root.Subcommands.Add(ModelCommands.CreatePerplexity());
        root.Subcommands.Add(ModelCommands.CreateGenerate());
        root.Subcommands.Add(ChatCommand.Create(stdin));
        root.Subcommands.Add(ServeCommand.Create());
        root.Subcommands.Add(QuantizeCommand.Create());
        root.Subcommands.Add(SftCommand.Create());
        root.Subcommands.Add(RewardCommand.Create());
        root.Subcommands.Add(DpoCommand.Create());
        root.Subcommands.Add(SelfInstructCommand.Create());
        root.Subcommands.Add(JudgeCommand.Create());
        root.Subcommands.Add(DemoCommand.Create());
        root.Subcommands.Add(CheckCommand.Create());
        root.Subcommands.Add(FuzzCommand.Create());
        root.Subcommands.Add(Distributed.MpiSelfTestCommand.Create());
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            stderr.WriteLine($"tinyllama: {parsed.Errors[0].Message} (run 'tinyllama --help')");
            return ExitCodes.Usage;
        }
        int? previousThreads = ThreadsOption.Apply(parsed);
        var previousActivations = ActivationsOption.Apply(parsed);
        try
        {
            return parsed.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (e is CliException or ArgumentException or IOException or InvalidDataException or NotSupportedException or FormatException or UnauthorizedAccessException)
        {
            stderr.WriteLine($"tinyllama: {e.Message}");
            return e is CliException { IsUsage: true } ? ExitCodes.Usage : ExitCodes.Failure;
        }
        finally
        {
            if (previousThreads is int previous) TinyLlama.Backends.Cpu.CpuThreads.Count = previous;
            if (previousActivations is { } activations) TinyLlama.Generation.CpuDecoder.DefaultActivations = activations;
        }
    }
}

/// <summary>Process exit codes.</summary>
public static class ExitCodes
{
    public const int Success = 0;
    public const int Failure = 1;
    public const int Usage = 2;
}

/// <summary>An expected failure, reported as one line without a stack trace.</summary>
public sealed class CliException(string message, bool isUsage = false) : Exception(message)
{
    /// <summary>True when the arguments were wrong (exit code 2).</summary>
    public bool IsUsage { get; } = isUsage;
}
