// Self-Instruct's filters one by one (each removes what it should and counts it under its own name), the
// counts adding up, and the parse of model continuations, good and malformed.
using TinyLlama.Training.SelfInstruct;

namespace TinyLlama.Tests.SelfInstruct;

public class SelfInstructFilterTests
{
    private static readonly InstructionRecord[] Seeds =
    [
        new("Reverse the letters of the word.", "c a t", " t a c"),
        new("Name three primary colors.", "", "Red, yellow and blue."),
    ];

    private static InstructionRecord Task(string instruction, string input = "", string output = "ok") => new(instruction, input, output);

    /// <summary>A verifier that answers from a table keyed by output.</summary>
    private sealed class TableVerifier(Dictionary<string, bool?> byOutput) : IOutputVerifier
    {
        public string Name => "table";
        public bool? Verify(string instruction, string input, string output) => byOutput.GetValueOrDefault(output);
    }

    [Fact]
    public void EachFilterRemovesWhatItShouldAndCountsIt()
    {
        var verifier = new TableVerifier(new() { ["right"] = true, ["wrong"] = false });
        var filter = new SelfInstructFilter(new SelfInstructFilterOptions { MinInstructionWords = 3, MaxInstructionWords = 12 }, verifier, Seeds);
        (InstructionRecord?, CandidateVerdict)[] cases =
        [
            (null, CandidateVerdict.Malformed),
            (Task("Explain what a verb is.", output: "   "), CandidateVerdict.Malformed),              // empty output
            (Task("Say hi.", output: "right"), CandidateVerdict.TooShort),                            // 2 words < 3
            (Task(string.Join(' ', Enumerable.Repeat("word", 13)), output: "right"), CandidateVerdict.TooLong),
            (Task("Draw a cat for me.", output: "right"), CandidateVerdict.Blacklisted),
            (Task("Please GO TO the shop and list what you buy.", output: "right"), CandidateVerdict.Blacklisted), // any case, two words
            (Task("Reverse the letters of the word.", "c a t", "right"), CandidateVerdict.Duplicate), // a seed's instruction and input
            (Task("Reverse the letters of the words.", "d o g", "right"), CandidateVerdict.TooSimilar), // ROUGE-L 5/6 vs a seed
            (Task("Explain what a noun is.", output: "wrong"), CandidateVerdict.VerifierRejected),
            (Task("Describe the drawing style of comics.", output: "unknown"), CandidateVerdict.Unverifiable), // "drawing" is not "draw"
            (Task("Explain what an adjective is.", output: "right"), CandidateVerdict.Kept),
            (Task("Explain what an adjective is.", output: "right"), CandidateVerdict.Duplicate),    // now in the pool
            (Task("Explain what an adverb is please.", output: "right"), CandidateVerdict.TooSimilar), // 4 of 5 and 6 tokens vs the kept one
        ];
        foreach (var (candidate, expected) in cases)
            Assert.True(expected == filter.Consider(candidate), $"{candidate?.Instruction ?? "(malformed)"}: expected {expected}");

        var r = filter.Report;
        Assert.Equal(cases.Length, r.Candidates);
        Assert.Equal(r.Candidates, r.Kept + r.Removed);
        Assert.Equal((2, 1, 1, 2, 2, 2, 1, 1, 1), (r.Malformed, r.TooShort, r.TooLong, r.Blacklisted, r.Duplicates, r.TooSimilar, r.VerifierRejected, r.Unverifiable, r.Kept));
        Assert.Equal(r.Removed, r.ByFilter.Sum(f => f.Removed));
    }

    [Fact]
    public void HeldOutItemsAreRemovedHoweverRightTheirOutput()
    {
        var heldOut = new HashSet<string> { "d o g", "3 1 2" };
        var verifier = new TableVerifier(new() { ["right"] = true, ["wrong"] = false });
        var filter = new SelfInstructFilter(new SelfInstructFilterOptions { HeldOut = r => heldOut.Contains(r.Input.Trim()) }, verifier, Seeds);
        Assert.Equal(CandidateVerdict.HeldOut, filter.Consider(Task("Reverse the letters of a word.", "d o g", "right")));
        Assert.Equal(CandidateVerdict.HeldOut, filter.Consider(Task("Sort these digits please.", "3 1 2 ", "wrong")));   // before the verifier
        Assert.Equal(CandidateVerdict.Duplicate, filter.Consider(Task("Reverse the letters of the word.", "c a t", "right"))); // a seed's, not held out
        Assert.Equal(CandidateVerdict.Kept, filter.Consider(Task("Sort these digits please.", "3 2 1", "right")));
        var r = filter.Report;
        Assert.Equal((2, 1, 1), (r.HeldOut, r.Duplicates, r.Kept));
        Assert.Equal(r.Candidates, r.Kept + r.Removed);
        Assert.Contains(("held_out", 2), r.ByFilter);
    }

    [Fact]
    public void RougeThresholdIsInclusiveAtTheBoundary()
    {
        // "a b c d" against "a b c e": LCS 3 of 4 and 4, F = 0.75.
        var at = new SelfInstructFilter(new SelfInstructFilterOptions { RougeLThreshold = 0.75, MinInstructionWords = 1 }, null, [Task("a b c d")]);
        Assert.Equal(CandidateVerdict.TooSimilar, at.Consider(Task("a b c e")));
        var above = new SelfInstructFilter(new SelfInstructFilterOptions { RougeLThreshold = 0.76, MinInstructionWords = 1 }, null, [Task("a b c d")]);
        Assert.Equal(CandidateVerdict.Kept, above.Consider(Task("a b c e")));
    }

    [Fact]
    public void WithoutInstructionChecksOnlyMalformedDuplicatesAndTheVerifierRun()
    {
        var filter = new SelfInstructFilter(new SelfInstructFilterOptions { CheckInstruction = false }, null, Seeds);
        Assert.Equal(CandidateVerdict.Kept, filter.Consider(Task("Draw.", "x")));                                   // short and blacklisted
        Assert.Equal(CandidateVerdict.Kept, filter.Consider(Task("Reverse the letters of the word.", "d o g")));   // a seed's instruction, new input
        Assert.Equal(CandidateVerdict.Duplicate, filter.Consider(Task("Reverse the letters of the word.", "c a t")));
    }

    [Fact]
    public void BadOptionsAreRefused()
    {
        Assert.Throws<ArgumentException>(() => new SelfInstructFilter(new SelfInstructFilterOptions { RougeLThreshold = 0 }, null, Seeds));
        Assert.Throws<ArgumentException>(() => new SelfInstructFilter(new SelfInstructFilterOptions { MinInstructionWords = 5, MaxInstructionWords = 4 }, null, Seeds));
    }

    // ---------------- parsing continuations ----------------

    [Fact]
    public void AWholeTaskParsesAndStopsAtTheNextOne()
    {
        string text = " Sort the numbers.\nInput: 3 1 2\nOutput: 1 2 3\n\nTask 6\nInstruction: something else";
        var r = SelfInstructPrompt.Parse(text, ended: false, out var problem);
        Assert.Null(problem);
        Assert.Equal(new InstructionRecord("Sort the numbers.", "3 1 2", "1 2 3"), r);
        Assert.True(SelfInstructPrompt.IsComplete(text));
        Assert.False(SelfInstructPrompt.IsComplete(" Sort the numbers.\nInput: 3 1 2\nOutput: 1 2"));
    }

    [Fact]
    public void NoInputAndMultiLineOutputParseWhenTheModelStopped()
    {
        var r = SelfInstructPrompt.Parse(" Write a haiku.\nInput: <noinput>\nOutput: line one\nline two\n", ended: true, out _);
        Assert.Equal(new InstructionRecord("Write a haiku.", "", "line one\nline two"), r);
    }

    [Theory]
    [InlineData(" Sort the numbers.\nOutput: 1 2 3", true, "no \"Input:\" line")]
    [InlineData(" Sort the numbers.\nInput: 3 1 2", true, "no \"Output:\" line after the input")]
    [InlineData(" Sort the numbers.\nInput: 3 1 2\nOutput: 1 2", false, "cut off by the token budget")]
    [InlineData("\nInput: 3 1 2\nOutput: 1 2 3", true, "empty instruction")]
    [InlineData(" Sort the numbers.\nInput: 3 1 2\nOutput:  \n\nTask 3", true, "empty output")]
    [InlineData("", true, "no \"Input:\" line")]
    public void MalformedContinuationsSayWhy(string text, bool ended, string reason)
    {
        Assert.Null(SelfInstructPrompt.Parse(text, ended, out var problem));
        Assert.Equal(reason, problem);
    }

    [Fact]
    public void ThePromptListsTheTasksAndEndsAtTheNextInstruction()
    {
        string prompt = SelfInstructPrompt.Build(Seeds);
        Assert.StartsWith(SelfInstructPrompt.Preamble, prompt);
        Assert.Contains("Task 1\nInstruction: Reverse the letters of the word.\nInput: c a t\nOutput: t a c\n\n", prompt);
        Assert.Contains("Task 2\nInstruction: Name three primary colors.\nInput: <noinput>\nOutput: Red, yellow and blue.\n\n", prompt);
        Assert.EndsWith("\n\nTask 3\nInstruction:", prompt);
        // What follows "Task 2\nInstruction:" parses back to the second seed (outputs trimmed).
        string tail = prompt[(prompt.IndexOf("Task 2\nInstruction:", StringComparison.Ordinal) + "Task 2\nInstruction:".Length)..];
        Assert.Equal(Seeds[1], SelfInstructPrompt.Parse(tail, ended: false, out _));
    }
}
