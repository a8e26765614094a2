// The README's "Use it from C#" program: its code block is ReadmeSample.cs's usings and the lines between its
// markers, word for word (so the README cannot drift from code that compiles), and the program runs: it loads
// ../shared/reference/tiny-random-llama, generates, chats, trains LoRA adapters for ten steps and saves them.
using System.Text.RegularExpressions;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Packaging;

public partial class ReadmeSampleTests
{
    private const string Heading = "## Use it from C#";

    /// <summary>The README block as ReadmeSample.cs spells it: its TinyLlama and Microsoft.Extensions.AI usings, a blank line, the marked lines dedented.</summary>
    internal static string ExpectedBlock(string sampleSource)
    {
        var lines = sampleSource.ReplaceLineEndings("\n").Split('\n');
        var usings = lines.Where(l => l.StartsWith("using TinyLlama.", StringComparison.Ordinal) || l == "using Microsoft.Extensions.AI;");
        int begin = Array.FindIndex(lines, l => l.Trim() == "// README sample begins");
        int end = Array.FindIndex(lines, l => l.Trim() == "// README sample ends");
        if (begin < 0 || end <= begin) throw new InvalidDataException("ReadmeSample.cs: the README sample markers are missing");
        const int indent = 8;
        var body = lines[(begin + 1)..end].Select(l => l.Length >= indent ? l[indent..] : l.TrimStart());
        return string.Join('\n', usings.Append("").Concat(body));
    }

    [SkippableFact]
    public void ReadmeQuotesTheSampleWordForWord()
    {
        string root = SharedData.RepositoryRoot ?? throw new SkipException("the tests do not run from a checkout (no TinyLlama.sln above them); skipping");
        string readme = File.ReadAllText(Path.Combine(root, "README.md")).ReplaceLineEndings("\n");
        int section = readme.IndexOf("\n" + Heading + "\n", StringComparison.Ordinal);
        Assert.True(section >= 0, $"README.md has no section \"{Heading}\"");
        var block = CodeBlock().Match(readme, section);
        Assert.True(block.Success, $"README.md: no ```csharp block after \"{Heading}\"");
        string expected = ExpectedBlock(File.ReadAllText(Path.Combine(root, "tests", "TinyLlama.Tests", "Packaging", "ReadmeSample.cs")));
        Assert.Equal(expected, block.Groups[1].Value.TrimEnd('\n'));
        Assert.Contains("IChatClient client = new TinyLlamaChatClient(", expected); // the IChatClient part is in the sample
    }

    [SkippableFact]
    public void SampleRunsOnTheTinyReferenceModel()
    {
        string model = SharedData.Require("tiny-random-llama");
        string data = SharedData.Require("tiny-random-llama/sft_sample.json");
        string adapter = Directory.CreateTempSubdirectory("tinyllama-readme-").FullName;
        try
        {
            var output = new StringWriter();
            ReadmeSample.Run(model, data, adapter, output);
            var lines = output.ToString().ReplaceLineEndings("\n").Split('\n', StringSplitOptions.RemoveEmptyEntries);
            var losses = lines.Where(l => l.StartsWith("step ", StringComparison.Ordinal)).ToList();
            Assert.Equal(10, losses.Count);
            Assert.StartsWith("step 10: loss ", losses[^1]);
            foreach (var l in losses)
                Assert.True(double.TryParse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture, out double loss) && double.IsFinite(loss) && loss > 0, l);
            Assert.True(File.Exists(Path.Combine(adapter, "adapter_config.json")), "the sample saved no adapter_config.json");
        }
        finally
        {
            Directory.Delete(adapter, recursive: true);
        }
    }

    [GeneratedRegex("```csharp\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex CodeBlock();
}
