// Runs the CLI and captures stdout, stderr and the exit code: in-process (Run), or as a child process
// with extra environment variables (RunProcess), for what .NET fixes when a process starts, such as
// the SIMD paths that DOTNET_EnableAVX512=0 or DOTNET_EnableAVX2=0 switch off.
using System.Diagnostics;

namespace TinyLlama.Tests.Cli;

internal static class CliRunner
{
    public static (int Code, string Out, string Err) Run(params string[] args) => RunWithInput(null, args);

    /// <summary>Runs in-process with <paramref name="stdin"/> as standard input (redirected-input behaviour).</summary>
    public static (int Code, string Out, string Err) RunWithInput(string? stdin, params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = TinyLlama.Cli.Program.Run(args, stdout, stderr, stdin is null ? null : new StringReader(stdin));
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>
    /// Asserts a failure reported as the CLI reports it: exit code <paramref name="expectedCode"/> and exactly one
    /// line on stderr, "tinyllama: ...", with no stack trace. Returns the line.
    /// </summary>
    public static string AssertOneLineError(int expectedCode, int code, string err)
    {
        Assert.True(code == expectedCode, $"exit code {code}, expected {expectedCode}: {err}");
        var lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith("tinyllama: ", lines[0]);
        Assert.DoesNotContain(" at ", lines[0]);
        return lines[0];
    }

    /// <summary>
    /// Runs tinyllama.dll (built beside the tests) under the dotnet host that runs the tests, with
    /// <paramref name="environment"/> added to this process's environment; fails the test after
    /// <paramref name="timeout"/>.
    /// </summary>
    public static (int Code, string Out, string Err) RunProcess(IReadOnlyDictionary<string, string> environment, TimeSpan timeout, params string[] args) =>
        RunProcess(ProcessStart(environment, args), timeout);

    /// <summary>
    /// Runs <paramref name="start"/> (output redirected) to its end and returns the exit code, stdout and stderr;
    /// kills it and fails the test after <paramref name="timeout"/>.
    /// </summary>
    public static (int Code, string Out, string Err) RunProcess(ProcessStartInfo start, TimeSpan timeout)
    {
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {start.FileName}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{start.FileName} {string.Join(' ', start.ArgumentList)} did not finish within {timeout.TotalSeconds:F0} s");
        }
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>The dotnet host running the tests (`dotnet test` names it in DOTNET_HOST_PATH), else "dotnet" on the PATH.</summary>
    public static string DotnetHost =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h ? h
            : Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet" ? Environment.ProcessPath! : "dotnet";

    /// <summary>How to start tinyllama.dll as a child process with redirected output (see <see cref="RunProcess(ProcessStartInfo, TimeSpan)"/>).</summary>
    public static ProcessStartInfo ProcessStart(IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        string cli = typeof(TinyLlama.Cli.Program).Assembly.Location;
        var start = new ProcessStartInfo(DotnetHost) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(cli);
        foreach (var a in args) start.ArgumentList.Add(a);
        foreach (var (key, value) in environment) start.Environment[key] = value;
        return start;
    }
}
