// The demo's preference-pair rule (DemoPreferencePairs.Mine) over scripted answers: a prompt answered wrong
// first (greedily) and right by a later sample gives one pair (chosen = the right answer, rejected = the
// greedy mistake, Alpaca's leading space on both, the Alpaca prompt); a prompt answered right first asks no
// more and gives none, nor does one no sample gets right; sampling stops at the first right answer; the
// counts add up.
using TinyLlama.Training.Data;
using TinyLlama.Training.Demo;

namespace TinyLlama.Tests.Preferences;

public class DemoPreferencePairsTests
{
    [Fact]
    public void PairsAGreedyMistakeWithARightSample()
    {
        var data = DemoDataset.Generate(3, trainPerFamily: 4, testPerFamily: 1);
        var tasks = data.Train.Take(4).ToList();
        // Task 0: "x" greedily, then "y", right -> pair (right, "x"), asked 3 times. Task 1: right greedily, asked once.
        // Task 2: wrong every time, asked 4 times. Task 3: "z", then right, asked twice.
        string[][] script =
        [
            ["x", "y", tasks[0].Answer, tasks[0].Answer],
            [tasks[1].Answer, "never", "never", "never"],
            ["a", "b", "c", "d"],
            ["z", tasks[3].Answer, "never", "never"],
        ];
        var asked = new List<ulong>();
        var mined = DemoPreferencePairs.Mine(tasks, 4, (task, n) =>
        {
            asked.Add(n);
            Assert.Equal(tasks.IndexOf(task), (int)(n / 4));
            return script[n / 4][n % 4];
        });
        Assert.Equal(new ulong[] { 0, 1, 2, 4, 8, 9, 10, 11, 12, 13 }, asked);
        Assert.Equal((4, 10, 1, 1), (mined.Prompts, mined.Answers, mined.GreedyRight, mined.NeverRight));
        Assert.Equal(2, mined.Pairs.Count);
        var first = mined.Pairs[0];
        Assert.Equal(AlpacaTemplate.Prompt(tasks[0].Instruction, tasks[0].Input), first.Prompt);
        Assert.Equal((" " + tasks[0].Answer, " x"), (first.Chosen, first.Rejected));
        Assert.Equal((" " + tasks[3].Answer, " z"), (mined.Pairs[1].Chosen, mined.Pairs[1].Rejected));
        Assert.Throws<ArgumentOutOfRangeException>(() => DemoPreferencePairs.Mine(tasks, 1, (_, _) => ""));
    }
}
