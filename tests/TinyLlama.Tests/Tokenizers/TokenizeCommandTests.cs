// `tinyllama tokenize --tokenizer PATH --jsonl FILE`, run in-process through Program.Run: output
// format (one JSON array of ids per line, no BOS), the three kinds of PATH, and the exit codes and
// one-line messages of the failures scripts depend on.
using System.Text.Json;
using TinyLlama.Cli;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Tokenizers;

public sealed class TokenizeCommandTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "tinyllama-tokenize-" + Guid.NewGuid().ToString("N"));

    public TokenizeCommandTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string WriteLines(string name, IEnumerable<string> lines)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllLines(path, lines);
        return path;
    }

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Program.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    private static string[] Lines(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToArray();

    [SkippableFact]
    public void PrintsOneIdArrayPerLine_ForEveryReferenceCase()
    {
        string model = SharedData.Require(TokenizerTestData.ModelPath);
        var cases = TokenizerTestData.Cases();
        string input = WriteLines("in.jsonl", cases.Select(c => JsonSerializer.Serialize(new { text = c.Text })));
        var (code, output, err) = Run("tokenize", "--tokenizer", model, "--jsonl", input);
        Assert.True(code == 0, err);
        Assert.Equal("", err);
        string[] expected = [.. cases.Select(c => "[" + string.Join(", ", c.Ids) + "]")];
        Assert.Equal(expected, Lines(output));
        Assert.Contains("[15043, 3186]", Lines(output)); // "Hello world": the documented format
    }

    [SkippableFact]
    public void AcceptsADirectory_AndIgnoresOtherFields()
    {
        string model = SharedData.Require(TokenizerTestData.ModelPath);
        string input = WriteLines("in.jsonl", ["{\"id\": 7, \"text\": \"Hello world\"}", "{\"text\": \"\"}"]);
        var (code, output, err) = Run("tokenize", "--tokenizer", Path.GetDirectoryName(model)!, "--jsonl", input);
        Assert.True(code == 0, err);
        Assert.Equal(["[15043, 3186]", "[]"], Lines(output));
    }

    [SkippableFact]
    public void MalformedLine_ExitsOne_WithOneLineNamingFileAndLine()
    {
        string model = SharedData.Require(TokenizerTestData.ModelPath);
        string input = WriteLines("bad.jsonl", ["{\"text\": \"ok\"}", "{\"text\": \"unterminated}", "{\"text\": \"never reached\"}"]);
        var (code, output, err) = Run("tokenize", "--tokenizer", model, "--jsonl", input);
        Assert.Equal(1, code);
        Assert.Single(Lines(err));
        Assert.Contains($"{input}:2:", err);
        Assert.Single(Lines(output)); // line 1 was printed before the error

        string noText = WriteLines("notext.jsonl", ["[1, 2]"]);
        (code, _, err) = Run("tokenize", "--tokenizer", model, "--jsonl", noText);
        Assert.Equal(1, code);
        Assert.Contains($"{noText}:1:", err);
        Assert.Single(Lines(err));
    }

    [SkippableFact]
    public void MissingFiles_ExitOne_NamingThem()
    {
        string model = SharedData.Require(TokenizerTestData.ModelPath);
        string missingInput = Path.Combine(_dir, "missing.jsonl");
        var (code, _, err) = Run("tokenize", "--tokenizer", model, "--jsonl", missingInput);
        Assert.Equal(1, code);
        Assert.Contains(missingInput, err);
        Assert.Single(Lines(err));

        string input = WriteLines("in.jsonl", ["{\"text\": \"a\"}"]);
        string missingModel = Path.Combine(_dir, "missing.model");
        (code, _, err) = Run("tokenize", "--tokenizer", missingModel, "--jsonl", input);
        Assert.Equal(1, code);
        Assert.Contains(missingModel, err);
    }

    [Fact]
    public void CorruptTokenizer_ExitsOne_NamingIt()
    {
        string model = Path.Combine(_dir, "tokenizer.model");
        File.WriteAllBytes(model, [0x0A, 0x40, 0x0A]);
        string input = WriteLines("in.jsonl", ["{\"text\": \"a\"}"]);
        var (code, _, err) = Run("tokenize", "--tokenizer", model, "--jsonl", input);
        Assert.Equal(1, code);
        Assert.Contains(model, err);
        Assert.Single(Lines(err));
    }

    [Fact]
    public void UnknownOrMissingFlags_ExitTwo()
    {
        string input = WriteLines("in.jsonl", ["{\"text\": \"a\"}"]);
        Assert.Equal(2, Run("tokenize", "--tokenizer", "x", "--jsonl", input, "--bos").Code);
        Assert.Equal(2, Run("tokenize", "--jsonl", input).Code);
        Assert.Equal(2, Run("tokenize", "--tokenizer", "x").Code);
    }
}
