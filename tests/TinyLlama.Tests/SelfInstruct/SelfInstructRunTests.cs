// Self-Instruct runs: scripted models (the loop, prompt fitting, the NewInputs mode with a verifier doing
// rejection sampling), the input mutator, seed-file errors, and end to end through the CLI on a tiny random
// model, where the report's counts must add up to the candidates and the written file must hold the kept records.
using System.Text.Json;
using TinyLlama.Generation;
using TinyLlama.Tensors;
using TinyLlama.Tests.Cli;
using TinyLlama.Tests.Formats;
using TinyLlama.Training.Demo;
using TinyLlama.Training.SelfInstruct;

namespace TinyLlama.Tests.SelfInstruct;

public class SelfInstructRunTests
{
    private static readonly InstructionRecord[] DemoSeeds =
    [
        new("Reverse the letters.", "c a t", " t a c"),
        new("Count the letters.", "d o g s", " 4"),
        new("Compute the result.", "47 + 3", " 50"),
    ];

    [Fact]
    public void ScriptedNewInstructionsAreParsedFilteredAndCounted()
    {
        string[] replies =
        [
            " List three fruits that are red.\nInput: <noinput>\nOutput: Apple, cherry, strawberry.\n\nTask 9",
            " List three fruits that are red.\nInput: <noinput>\nOutput: Raspberry.\n\nTask 9",       // duplicate of the kept one
            " Draw a house.\nInput: <noinput>\nOutput: ...",                                            // blacklisted ("draw"), ended
            " garbage without fields",                                                                   // malformed
            " Give the plural of the noun.\nInput: mouse\nOutput: mice",                                // kept (ended at EOS)
        ];
        var prompts = new List<string>();
        int call = 0;
        (string, bool) Complete(string prompt, int max, SamplingOptions sampling, Func<string, bool>? stop)
        {
            prompts.Add(prompt);
            Assert.Equal(0.9, sampling.Temperature);
            return (replies[call++], true);
        }
        var options = new SelfInstructOptions { Count = 2, MaxAttempts = 10, Examples = 3, GeneratedExamples = 1, Temperature = 0.9, Seed = 5 };
        var result = SelfInstructGenerator.Run(Complete, DemoSeeds, options);
        Assert.Equal(5, call);                                  // stopped once two were kept
        Assert.Equal(["List three fruits that are red.", "Give the plural of the noun."], result.Records.Select(r => r.Instruction));
        var r = result.Report;
        Assert.Equal((5, 2, 1, 1, 1), (r.Candidates, r.Kept, r.Duplicates, r.Blacklisted, r.Malformed));
        Assert.Equal(r.Candidates, r.Kept + r.Removed);
        // The first prompt holds the three seeds; later ones mix in the kept task.
        Assert.All(DemoSeeds, s => Assert.Contains(s.Instruction, prompts[0]));
        Assert.Contains("List three fruits that are red.", prompts[1]);
        Assert.EndsWith("Task 4\nInstruction:", prompts[1]);
    }

    [Fact]
    public void PromptsThatDoNotFitLoseInContextTasksButKeepOne()
    {
        var prompts = new List<string>();
        var options = new SelfInstructOptions { Count = 1, MaxAttempts = 2, Examples = 3 };
        SelfInstructGenerator.Run((p, _, _, _) => { prompts.Add(p); return ("", true); }, DemoSeeds, options, fits: p => p.Length < 250);
        Assert.Equal(2, prompts.Count);
        foreach (var p in prompts)
        {
            int tasks = System.Text.RegularExpressions.Regex.Count(p, "\nInstruction: ");
            Assert.True(tasks >= 1 && (p.Length < 250 || tasks == 1), p);
            Assert.True(tasks < 3, "the full three-task prompt is longer than 250 characters and must have lost a task");
        }
        SelfInstructGenerator.Run((p, _, _, _) => { prompts.Add(p); return ("", true); }, DemoSeeds, options, fits: _ => false);
        Assert.EndsWith("Task 2\nInstruction:", prompts[^1]);   // one task left
    }

    [Fact]
    public void NewInputsWithTheDemoVerifierKeepOnlyRightAnswers()
    {
        // A model that answers right two times out of three (wrong: the answer's last character dropped).
        int call = 0;
        (string, bool) Complete(string prompt, int max, SamplingOptions sampling, Func<string, bool>? stop)
        {
            Assert.Equal(0, sampling.Temperature);              // answers are greedy
            string instruction = Between(prompt, "### Instruction:\n", "\n\n");
            string input = Between(prompt, "### Input:\n", "\n\n");
            string answer = DemoTaskVerifier.Answer(instruction, input) ?? "?";
            return (" " + (call++ % 3 == 2 ? answer[..^1] + "#" : answer), true);
        }
        var options = new SelfInstructOptions { Count = 12, MaxAttempts = 40, Mode = SelfInstructMode.NewInputs, Verifier = new DemoTaskVerifier(), Seed = 1 };
        var result = SelfInstructGenerator.Run(Complete, DemoSeeds, options);
        var r = result.Report;
        Assert.Equal(r.Candidates, r.Kept + r.Removed);
        Assert.Equal(12, r.Kept);
        Assert.True(r.VerifierRejected >= 4, $"rejected {r.VerifierRejected}");
        Assert.Equal(0, r.TooShort + r.TooSimilar + r.Blacklisted);  // instruction filters are off: instructions are the seeds'
        var verifier = new DemoTaskVerifier();
        foreach (var rec in result.Records)
        {
            Assert.Contains(DemoSeeds, s => s.Instruction == rec.Instruction);
            Assert.True(verifier.Verify(rec.Instruction, rec.Input, rec.Output));
            Assert.StartsWith(" ", rec.Output);                      // the seeds' leading-space convention
            Assert.DoesNotContain(DemoSeeds, s => s.Instruction == rec.Instruction && s.Input == rec.Input);
        }
        Assert.Equal(result.Records.Count, result.Records.Select(x => (x.Instruction, x.Input)).Distinct().Count());
    }

    [Fact]
    public void MutatedInputsKeepTheSeedsShape()
    {
        var rng = new Generator(11);
        for (int i = 0; i < 200; i++)
        {
            string letters = InputMutator.Mutate("c a t", rng);
            Assert.Matches("^[a-z]( [a-z]){1,3}$", letters);         // 3 letters, one more or one fewer
            Assert.Matches("^[1-9][0-9] [+] [0-9]$", InputMutator.Mutate("47 + 3", rng));   // a number's first digit stays non-zero
            Assert.Matches("^[0-9] [0-9]( [0-9]){0,2}$", InputMutator.Mutate("5 0 8", rng));
            Assert.Matches("^[A-Z][a-z]-[0-9]$", InputMutator.Mutate("Ab-0", rng));
        }
        Assert.Equal("", InputMutator.Mutate("", rng));
    }

    [Fact]
    public void SeedFileErrorsNameTheFileAndLine()
    {
        using var dir = new TempDir();
        string path = dir.File("seeds.jsonl");
        File.WriteAllText(path, "{\"instruction\": \"Q\", \"output\": \"a\"}\n{\"instruction\": \"Q2\"}\n");
        Assert.Equal($"{path}:2: field \"output\" is missing", Assert.Throws<InvalidDataException>(() => InstructionRecord.ReadAll(path)).Message);
        File.WriteAllText(path, "{\"instruction\": \" \", \"output\": \"a\"}\n");
        Assert.Equal($"{path}:1: field \"instruction\" is empty", Assert.Throws<InvalidDataException>(() => InstructionRecord.ReadAll(path)).Message);
        Assert.Contains("does not exist", Assert.Throws<InvalidDataException>(() => InstructionRecord.ReadAll(dir.File("none.jsonl"))).Message);
    }

    [Fact]
    public void RecordsRoundTripThroughJsonLines()
    {
        using var dir = new TempDir();
        string path = dir.File("out.jsonl");
        InstructionRecord[] records = [new("Say \"hi\".", "", " hi\nthere"), new("Écris ça.", "x", "y")];
        InstructionRecord.WriteJsonLines(path, records);
        Assert.Equal(2, File.ReadAllLines(path).Length);
        Assert.Equal(records, InstructionRecord.ReadAll(path));
    }

    // ---------------- end to end on a tiny random model ----------------

    [Theory]
    [InlineData("instructions")]
    [InlineData("inputs")]
    public void CliRunOnATinyModelCountsAddUpAndWritesTheKeptRecords(string mode)
    {
        using var dir = new TempDir();
        var (model, _) = SftReliabilityTests.WriteModelAndData(dir);
        string seeds = dir.File("seeds.jsonl"), output = dir.File("generated.jsonl");
        InstructionRecord.WriteJsonLines(seeds, DemoSeeds);
        var (code, stdout, err) = CliRunner.Run("self-instruct", "--model", model, "--seed-tasks", seeds, "--out", output, "--count", "3",
            "--max-attempts", "5", "--max-tokens", "12", "--mode", mode, "--verifier", "demo", "--seed", "2", "--json");
        Assert.True(code == 0, err);
        using var doc = JsonDocument.Parse(stdout);
        var root = doc.RootElement;
        int candidates = root.GetProperty("candidates").GetInt32(), kept = root.GetProperty("kept").GetInt32();
        int removed = new[] { "malformed", "too_short", "too_long", "blacklisted", "duplicate", "rouge_l", "verifier_rejected", "unverifiable" }
            .Sum(f => root.GetProperty(f).GetInt32());
        Assert.Equal(5, candidates);                                   // a random model keeps (almost) nothing: every attempt is made
        Assert.Equal(candidates, kept + removed);
        Assert.True(File.Exists(output));
        var written = File.ReadAllLines(output).Where(l => l.Length > 0).ToList();
        Assert.Equal(kept, written.Count);
        foreach (var line in written)
        {
            var record = JsonDocument.Parse(line).RootElement;
            Assert.True(new DemoTaskVerifier().Verify(record.GetProperty("instruction").GetString()!, record.GetProperty("input").GetString()!, record.GetProperty("output").GetString()!));
        }
    }

    [Fact]
    public void CliBadArgumentsAreOneLine()
    {
        using var dir = new TempDir();
        var (model, data) = SftReliabilityTests.WriteModelAndData(dir);
        string[] Args(params string[] extra) => ["self-instruct", "--model", model, "--seed-tasks", data, "--out", dir.File("o.jsonl"), "--count", "1", .. extra];
        var verifier = CliRunner.Run(Args("--verifier", "nope"));
        Assert.Contains("--verifier", CliRunner.AssertOneLineError(2, verifier.Code, verifier.Err));
        var mode = CliRunner.Run(Args("--mode", "nope"));
        Assert.Contains("--mode", CliRunner.AssertOneLineError(2, mode.Code, mode.Err));
        var rouge = CliRunner.Run(Args("--rouge-threshold", "0"));
        Assert.Contains("--rouge-threshold", CliRunner.AssertOneLineError(2, rouge.Code, rouge.Err));
        var missing = CliRunner.Run(["self-instruct", "--model", model, "--seed-tasks", dir.File("none.jsonl"), "--out", dir.File("o.jsonl"), "--count", "1"]);
        Assert.Contains("--seed-tasks", CliRunner.AssertOneLineError(1, missing.Code, missing.Err));
        var outDir = CliRunner.Run(["self-instruct", "--model", model, "--seed-tasks", data, "--out", dir.File("no/such/dir/o.jsonl"), "--count", "1"]);
        Assert.Contains("--out", CliRunner.AssertOneLineError(1, outDir.Code, outDir.Err));
        File.WriteAllText(dir.File("bad.jsonl"), "{\"instruction\": \"Q\", \"output\": 3}\n");
        var bad = CliRunner.Run(["self-instruct", "--model", model, "--seed-tasks", dir.File("bad.jsonl"), "--out", dir.File("o.jsonl"), "--count", "1"]);
        Assert.Contains("bad.jsonl:1: field \"output\" must be a string", CliRunner.AssertOneLineError(1, bad.Code, bad.Err));
    }

    private static string Between(string text, string start, string end)
    {
        int a = text.IndexOf(start, StringComparison.Ordinal) + start.Length;
        return text[a..text.IndexOf(end, a, StringComparison.Ordinal)];
    }
}
