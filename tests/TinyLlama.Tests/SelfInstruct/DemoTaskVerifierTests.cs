// The demo verifier: every instruction wording of every family, on the demo's own items (right answers
// verify, wrong ones do not), hand-checked answers in the demo's formats, unknown instructions and
// inputs not of the family's form.
using TinyLlama.Training.Demo;
using TinyLlama.Training.SelfInstruct;

namespace TinyLlama.Tests.SelfInstruct;

public class DemoTaskVerifierTests
{
    private readonly DemoTaskVerifier verifier = new();

    [Fact]
    public void EveryDemoItemVerifiesAndEveryWordingIsSeen()
    {
        var data = DemoDataset.Generate(seed: 3, trainPerFamily: 60, testPerFamily: 5);
        var seen = new HashSet<string>();
        foreach (var task in data.Train.Concat(data.Test))
        {
            Assert.True(verifier.Verify(task.Instruction, task.Input, task.Output) == true, $"{task.Instruction} {task.Input} -> {task.Output}");
            Assert.True(verifier.Verify(task.Instruction, task.Input, task.Answer) == true);
            // A wrong answer: one character changed, or a word dropped.
            string wrong = task.Answer.Length > 1 ? task.Answer[1..] : task.Answer == "9" ? "8" : "9";
            Assert.True(verifier.Verify(task.Instruction, task.Input, wrong) == false, $"{task.Instruction} {task.Input} -> {wrong}");
            seen.Add(task.Instruction);
        }
        var all = DemoDataset.InstructionWordings.SelectMany(k => k.Wordings).ToHashSet();
        Assert.Equal(18, all.Count);
        Assert.Equal(all, seen);
    }

    [Theory]
    [InlineData("Compute the result.", "47 + 3", "50")]
    [InlineData("Calculate this.", "20 - 3", " 17")]
    [InlineData("Work out the answer.", "99 + 3", "102")]
    [InlineData("Reverse the letters.", "c a t", "t a c")]
    [InlineData("Write these letters backwards.", "s t o p", "p o t s")]
    [InlineData("Spell this in reverse order.", "a b", "b a")]
    [InlineData("Sort the digits from smallest to largest.", "5 2 8", "2 5 8")]
    [InlineData("Put the digits in increasing order.", "3 3 0 1", "0 1 3 3")]
    [InlineData("Sort these digits.", "9 1 5", "1 5 9")]
    [InlineData("Count the letters.", "c a t", "3")]
    [InlineData("How many letters are there?", "a b c d e f g", "7")]
    [InlineData("Say how many letters this has.", "x y", "2")]
    [InlineData("Write these letters in capitals.", "c a t", "C A T")]
    [InlineData("Convert to upper case.", "q u i z", "Q U I Z")]
    [InlineData("Make the letters uppercase.", "a b c", "A B C")]
    [InlineData("Separate the letters with commas.", "c a t", "c, a, t")]
    [InlineData("Put commas between the letters.", "d o g s", "d, o, g, s")]
    [InlineData("Write the letters as a comma-separated list.", "h i", "h, i")]
    public void HandCheckedAnswersVerify(string instruction, string input, string output)
    {
        Assert.True(verifier.Verify(instruction, input, output));
        Assert.False(verifier.Verify(instruction, input, output.Trim() + " x"));
    }

    [Theory]
    [InlineData("Reverse the letters.", "c a t", "tac")]          // not spaced
    [InlineData("Reverse the letters.", "c a t", "c a t")]        // not reversed
    [InlineData("Count the letters.", "c a t", "three")]
    [InlineData("Write these letters in capitals.", "c a t", "c a t")]
    [InlineData("Separate the letters with commas.", "c a t", "c,a,t")]
    [InlineData("Reverse the letters.", "cat", "tac")]            // input not one letter per word
    [InlineData("Sort these digits.", "5 a 8", "5 8 a")]          // a letter among the digits
    [InlineData("Compute the result.", "47+3", "50")]             // not "a + b"
    [InlineData("Compute the result.", "47 * 3", "141")]          // not + or -
    [InlineData("Compute the result.", "", "0")]
    public void WrongAnswersAndMalformedInputsAreRejected(string instruction, string input, string output) =>
        Assert.False(verifier.Verify(instruction, input, output));

    [Theory]
    [InlineData("Translate this sentence into French.")]
    [InlineData("reverse the letters.")]                          // wordings are matched exactly
    [InlineData("")]
    public void UnknownInstructionsCannotBeChecked(string instruction) =>
        Assert.Null(verifier.Verify(instruction, "c a t", "t a c"));

    [Fact]
    public void ByNameKnowsTheDemoAndNamesTheChoicesOtherwise()
    {
        Assert.Equal("demo", OutputVerifiers.ByName("demo").Name);
        var e = Assert.Throws<ArgumentException>(() => OutputVerifiers.ByName("math"));
        Assert.Contains("demo", e.Message);
    }
}
