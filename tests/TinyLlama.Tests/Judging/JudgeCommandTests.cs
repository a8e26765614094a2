// The judge's files (errors as one line naming file:line) and `tinyllama judge` end to end with the
// exact-match judge: text and --json output, and the one-line refusals.
using System.Text.Json;
using TinyLlama.Tests.Cli;
using TinyLlama.Tests.Formats;
using TinyLlama.Training.Judging;

namespace TinyLlama.Tests.Judging;

public class JudgeCommandTests
{
    private static (string Q, string A, string B) WriteFiles(TempDir dir)
    {
        string q = dir.File("questions.jsonl"), a = dir.File("a.jsonl"), b = dir.File("b.jsonl");
        File.WriteAllText(q, "{\"id\": 1, \"question\": \"Reverse c a t\", \"answer\": \"t a c\"}\n{\"id\": \"two\", \"question\": \"Count d o g\", \"answer\": \"3\"}\n\n{\"id\": 3, \"question\": \"Sort 3 1\", \"answer\": \"1 3\"}\n");
        File.WriteAllText(a, "{\"id\": \"1\", \"answer\": \"t a c\"}\n{\"id\": \"two\", \"answer\": \"4\"}\n{\"id\": 3, \"answer\": \"1 3\"}\n");
        File.WriteAllText(b, "{\"id\": 3, \"answer\": \"3 1\"}\n{\"id\": 1, \"answer\": \"c a t\"}\n{\"id\": \"two\", \"answer\": \" 3\"}\n");
        return (q, a, b);
    }

    [Fact]
    public void FilesAreReadAndMatchedById()
    {
        using var dir = new TempDir();
        var (q, a, _) = WriteFiles(dir);
        var questions = JudgeFiles.ReadQuestions(q);
        Assert.Equal([new JudgeQuestion("1", "Reverse c a t", "t a c"), new JudgeQuestion("two", "Count d o g", "3"), new JudgeQuestion("3", "Sort 3 1", "1 3")], questions);
        var answers = JudgeFiles.ReadAnswers(a, q, questions);
        Assert.Equal("4", answers["two"]);
    }

    [Theory]
    [InlineData("{\"id\": 1, \"question\": \"x\"}\n{\"id\": \"1\", \"question\": \"y\"}\n", "questions.jsonl:2: field \"id\" \"1\" is repeated")]
    [InlineData("{\"question\": \"x\"}\n", "questions.jsonl:1: field \"id\" is missing")]
    [InlineData("{\"id\": 1.5, \"question\": \"x\"}\n", "questions.jsonl:1: field \"id\" must be a string or an integer, not a number with a fraction or out of range")]
    [InlineData("{\"id\": 1}\n", "questions.jsonl:1: field \"question\" is missing")]
    [InlineData("{\"id\": 1, \"question\": \"x\"\n", "questions.jsonl:1: malformed JSON")]
    public void QuestionFileErrorsNameFileAndLine(string content, string expected)
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("questions.jsonl"), content);
        var e = Assert.Throws<InvalidDataException>(() => JudgeFiles.ReadQuestions(dir.File("questions.jsonl")));
        Assert.StartsWith(dir.File(expected), e.Message);
    }

    [Fact]
    public void AnswerFileErrorsNameFileAndLine()
    {
        using var dir = new TempDir();
        var (q, _, _) = WriteFiles(dir);
        var questions = JudgeFiles.ReadQuestions(q);
        string path = dir.File("answers.jsonl");
        string Error(string content)
        {
            File.WriteAllText(path, content);
            return Assert.Throws<InvalidDataException>(() => JudgeFiles.ReadAnswers(path, q, questions)).Message;
        }
        Assert.Equal($"{path}:2: field \"id\" \"9\" is not a question in {q}", Error("{\"id\": 1, \"answer\": \"x\"}\n{\"id\": 9, \"answer\": \"x\"}\n"));
        Assert.Equal($"{path}:2: field \"id\" \"1\" is answered twice", Error("{\"id\": 1, \"answer\": \"x\"}\n{\"id\": \"1\", \"answer\": \"y\"}\n"));
        Assert.Equal($"{path}:1: field \"answer\" must be a string, not a number", Error("{\"id\": 1, \"answer\": 4}\n"));
        Assert.Equal($"{path}: no answer for question \"two\" of {q}", Error("{\"id\": 1, \"answer\": \"x\"}\n{\"id\": 3, \"answer\": \"x\"}\n"));
    }

    [Fact]
    public void ExactJudgeEndToEnd()
    {
        using var dir = new TempDir();
        var (q, a, b) = WriteFiles(dir);
        var (code, output, err) = CliRunner.Run("judge", "--questions", q, "--answers-a", a, "--answers-b", b, "--judge", "exact");
        Assert.True(code == 0, err);
        Assert.Equal(
            "1: A (A first: A; B first: A)\n" +
            "two: B (A first: B; B first: B)\n" +
            "3: A (A first: A; B first: A)\n" +
            "A wins 2, ties 0, B wins 1 of 3 questions (judge exact, both orders; 0 ties from orders that disagreed)\n",
            output.ReplaceLineEndings("\n"));

        (code, output, err) = CliRunner.Run("judge", "--questions", q, "--answers-a", a, "--answers-b", b, "--judge", "exact", "--json");
        Assert.True(code == 0, err);
        Assert.Single(output.Trim().Split('\n'));
        using var doc = JsonDocument.Parse(output);
        var root = doc.RootElement;
        Assert.Equal((2, 0, 1, 0), (root.GetProperty("wins").GetInt32(), root.GetProperty("ties").GetInt32(), root.GetProperty("losses").GetInt32(), root.GetProperty("inconsistent").GetInt32()));
        var verdicts = root.GetProperty("verdicts");
        Assert.Equal(3, verdicts.GetArrayLength());
        Assert.Equal(("two", "B", "B", "B"), (verdicts[1].GetProperty("id").GetString(), verdicts[1].GetProperty("verdict").GetString(),
            verdicts[1].GetProperty("a_first").GetString(), verdicts[1].GetProperty("b_first").GetString()));
    }

    [Fact]
    public void RefusalsAreOneLine()
    {
        using var dir = new TempDir();
        var (q, a, b) = WriteFiles(dir);
        string[] Args(string judge, string? questions = null) => ["judge", "--questions", questions ?? q, "--answers-a", a, "--answers-b", b, "--judge", judge];

        var reward = CliRunner.Run(Args(dir.Path));
        Assert.Contains("not a reward model directory (no reward_model.json", CliRunner.AssertOneLineError(1, reward.Code, reward.Err));
        var nothing = CliRunner.Run(Args(dir.File("no-such-judge")));
        Assert.Contains("expected exact, an http(s):// endpoint or a reward-model directory", CliRunner.AssertOneLineError(2, nothing.Code, nothing.Err));
        var missing = CliRunner.Run(Args("exact", dir.File("none.jsonl")));
        Assert.Contains("--questions", CliRunner.AssertOneLineError(1, missing.Code, missing.Err));
        string noReference = dir.File("noref.jsonl");
        File.WriteAllText(noReference, "{\"id\": 1, \"question\": \"q\"}\n{\"id\": \"two\", \"question\": \"r\"}\n{\"id\": 3, \"question\": \"s\"}\n");
        var exact = CliRunner.Run(Args("exact", noReference));
        Assert.Contains("--judge exact", CliRunner.AssertOneLineError(1, exact.Code, exact.Err));
        var badUrl = CliRunner.Run(Args("http://"));
        CliRunner.AssertOneLineError(2, badUrl.Code, badUrl.Err);
    }
}
