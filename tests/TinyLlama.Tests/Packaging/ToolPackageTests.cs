// The libraries as a .NET developer gets them: `dotnet pack` makes TinyLlama.Core, .Llama, .Training,
// .Backends.Ilgpu (with the kernels assembly inside, not as a package of its own) and the `tinyllama` tool;
// the tool installs from that folder with `dotnet tool install --tool-path` and runs. Offline: NuGet sees
// only the folder the packages were written to, and a packages cache of its own.
// Slow (packing the tool copies SkiaSharp's native libraries for every platform, ~100 MB): about 30-60 s.
using System.Diagnostics;
using System.IO.Compression;
using TinyLlama.Tests.Cli;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Packaging;

[Trait("Category", "Slow")]
[Collection(ToolPackageCollection.Name)]
public class ToolPackageTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(5);

    [SkippableFact]
    public void PackedToolInstallsAndRuns()
    {
        string root = SharedData.RepositoryRoot ?? throw new SkipException("the tests do not run from a checkout (no TinyLlama.sln above them); skipping the packaging test");
        Skip.IfNot(DotnetCliWorks(), $"the dotnet CLI ({CliRunner.DotnetHost}) does not run here; skipping the packaging test");
        // The configuration the tests were built in (bin/Release/net10.0/...) was built for every project they reference.
        string configuration = new DirectoryInfo(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)).Parent!.Name;
        string temp = Directory.CreateTempSubdirectory("tinyllama-pack-").FullName;
        try
        {
            string packages = Path.Combine(temp, "packages"), tools = Path.Combine(temp, "tools");
            var (code, output, error) = Dotnet(temp, isolatedCache: false, "pack", Path.Combine(root, "TinyLlama.sln"), "-c", configuration, "--no-build", "--no-restore", "-o", packages);
            Assert.True(code == 0, $"dotnet pack failed ({code}):\n{output}\n{error}");

            string[] expected = ["TinyLlama.Core", "TinyLlama.Llama", "TinyLlama.Training", "TinyLlama.Serving", "TinyLlama.Backends.Ilgpu", "TinyLlama.Cli"];
            var made = Directory.GetFiles(packages, "*.nupkg").Select(Path.GetFileName).ToList();
            foreach (var id in expected)
            {
                Assert.Contains(made, f => f!.StartsWith(id + ".", StringComparison.Ordinal) && char.IsDigit(f[id.Length + 1]));
                Assert.Single(Directory.GetFiles(packages, id + ".*.snupkg"), f => char.IsDigit(Path.GetFileName(f)[id.Length + 1]));
            }
            Assert.DoesNotContain(made, f => f!.StartsWith("TinyLlama.Kernels", StringComparison.Ordinal) || f.StartsWith("TinyLlama.Tests", StringComparison.Ordinal));
            using (var backend = ZipFile.OpenRead(Single(packages, "TinyLlama.Backends.Ilgpu")))
            {
                Assert.Contains(backend.Entries, e => e.FullName == "lib/net10.0/TinyLlama.Kernels.dll");
                Assert.Contains(backend.Entries, e => e.FullName == "README.md");
                string nuspec = new StreamReader(backend.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open()).ReadToEnd();
                Assert.Contains("<license type=\"expression\">MIT</license>", nuspec);
                Assert.DoesNotContain("TinyLlama.Kernels", nuspec);   // no dependency on a kernels package
            }
            using (var training = ZipFile.OpenRead(Single(packages, "TinyLlama.Training")))
            {
                string nuspec = new StreamReader(training.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open()).ReadToEnd();
                Assert.DoesNotContain("ScottPlot", nuspec);           // plots are the CLI's
                Assert.DoesNotContain("SkiaSharp", nuspec);
            }

            // Only the folder above as a source: the install cannot reach the network.
            File.WriteAllText(Path.Combine(temp, "nuget.config"), $"""
                <?xml version="1.0" encoding="utf-8"?>
                <configuration>
                  <packageSources>
                    <clear />
                    <add key="packed" value="{packages}" />
                  </packageSources>
                </configuration>
                """);
            (code, output, error) = Dotnet(temp, isolatedCache: true, "tool", "install", "--tool-path", tools, "--configfile", Path.Combine(temp, "nuget.config"), "TinyLlama.Cli");
            Assert.True(code == 0, $"dotnet tool install failed ({code}):\n{output}\n{error}");

            string tool = Path.Combine(tools, OperatingSystem.IsWindows() ? "tinyllama.exe" : "tinyllama");
            Assert.True(File.Exists(tool), $"the tool did not install as {tool}");
            (code, output, error) = CliRunner.RunProcess(Start(tool, temp, "--help"), Limit);
            Assert.True(code == 0, $"tinyllama --help exited {code}: {error}");
            foreach (var verb in new[] { "generate", "chat", "sft", "quantize", "info" }) Assert.Contains(verb, output);
            (code, output, error) = CliRunner.RunProcess(Start(tool, temp, "info", "--preset", "stories260K"), Limit);
            Assert.True(code == 0, $"tinyllama info --preset stories260K exited {code}: {error}");
            Assert.Contains("vocab", output, StringComparison.OrdinalIgnoreCase);
        }
        finally
        {
            try { Directory.Delete(temp, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    private static string Single(string folder, string id) =>
        Directory.GetFiles(folder, id + ".*.nupkg").Single(f => char.IsDigit(Path.GetFileName(f)[id.Length + 1]));

    private static bool DotnetCliWorks()
    {
        try
        {
            return CliRunner.RunProcess(Start(CliRunner.DotnetHost, Path.GetTempPath(), "--version"), TimeSpan.FromMinutes(1)).Code == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
    }

    // isolatedCache: a NuGet packages folder of its own under the test's folder, so that a package of the same
    // version cached by an earlier run cannot stand in for the one just packed (pack, with no restore, reads
    // the build's assets and keeps the usual one).
    private static (int Code, string Out, string Err) Dotnet(string workingDirectory, bool isolatedCache, params string[] args)
    {
        var start = Start(CliRunner.DotnetHost, workingDirectory, args);
        if (isolatedCache) start.Environment["NUGET_PACKAGES"] = Path.Combine(workingDirectory, "nuget-cache");
        return CliRunner.RunProcess(start, Limit);
    }

    private static ProcessStartInfo Start(string file, string workingDirectory, params string[] args)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = workingDirectory };
        foreach (var a in args) start.ArgumentList.Add(a);
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        return start;
    }
}

/// <summary>The packaging test runs alone: it packs every project of the checkout.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ToolPackageCollection
{
    public const string Name = "tool-package";
}
