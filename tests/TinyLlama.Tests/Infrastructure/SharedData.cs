// Locates ../shared/reference (beside the checkout). Tests that need it skip with a clear message
// where it is absent, e.g. on a fresh machine elsewhere.
namespace TinyLlama.Tests.Infrastructure;

public static class SharedData
{
    /// <summary>The reference folder, or null when it is not beside the checkout.</summary>
    public static string? ReferenceDir { get; } = Find();

    /// <summary>The checkout the tests were built from (the folder holding TinyLlama.sln), or null.</summary>
    public static string? RepositoryRoot { get; } = FindRoot();

    private static string? FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "TinyLlama.sln"))) return dir.FullName;
        return null;
    }

    private static string? Find()
    {
        var env = Environment.GetEnvironmentVariable("TINYLLAMA_REFERENCE");
        if (!string.IsNullOrEmpty(env) && Directory.Exists(env)) return env;
        if (FindRoot() is not { } root) return null;
        var candidate = Path.GetFullPath(Path.Combine(root, "..", "shared", "reference"));
        return Directory.Exists(candidate) ? candidate : null;
    }

    /// <summary>Path of a file under the reference folder; skips the calling test when it is absent.</summary>
    public static string Require(string relativePath)
    {
        Skip.If(ReferenceDir is null, "../shared/reference is not beside this checkout; skipping a test that needs the reference data");
        var path = Path.Combine(ReferenceDir!, relativePath);
        Skip.IfNot(File.Exists(path) || Directory.Exists(path), $"reference file {relativePath} is missing; skipping");
        return path;
    }
}
