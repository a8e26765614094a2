// The demo's synthetic instruction data: five families of small tasks with short exact answers, each
// item written two ways:
//   - as a plain sentence for pre-training ("c a t reversed is t a c."), the way facts appear in a
//     corpus, with no instruction and no template;
//   - as an Alpaca record (instruction, optional input, output) for instruction tuning.
// Letters and digits are written one per word ("c a t", "5 2 8") so every item is a sequence of
// single-character tokens: the tasks are then small algorithms over characters (copy backwards, map to
// capitals, sort, count, carry a digit) that a tiny model can learn and apply to items it never saw.
//
// Held-out items: every family draws items from one pool, and the test items are removed from that pool
// before any training text is written, so no test item appears in the pre-training sentences or in the
// fine-tuning records. Everything is a pure function of the seed.
using System.Globalization;
using System.Text;
using TinyLlama.Tensors;

namespace TinyLlama.Training.Demo;

/// <summary>One task instance.</summary>
/// <param name="Family">Task family: arithmetic, reverse, sort, count or format.</param>
/// <param name="Instruction">The Alpaca instruction.</param>
/// <param name="Input">The Alpaca input, or "" for none.</param>
/// <param name="Answer">The exact expected answer.</param>
/// <param name="Statement">The item as the start of a plain sentence that the answer completes ("c a t reversed is").</param>
public sealed record DemoTask(string Family, string Instruction, string Input, string Answer, string Statement)
{
    /// <summary>The item as a plain pre-training sentence: the statement, the answer, a full stop.</summary>
    public string Fact => Statement + " " + Answer + ".";

    /// <summary>
    /// What must differ between training and test items: the family and the item itself (its fact
    /// sentence), whatever the instruction's wording.
    /// </summary>
    public string ItemKey => Family + "|" + Fact;

    /// <summary>
    /// The Alpaca output: the answer after one space. The prompt ends in "### Response:" and the output
    /// follows it directly, so the space makes the answer's first character the same token ("▁t") as in
    /// the pre-training sentences; <see cref="DemoEvaluation"/> trims it before comparing.
    /// </summary>
    public string Output => " " + Answer;
}

/// <summary>The demo's train and held-out test items.</summary>
/// <param name="Train">Items for pre-training sentences and fine-tuning records.</param>
/// <param name="Test">Held-out items: none of them (family and fact sentence) occurs in <paramref name="Train"/>.</param>
public sealed record DemoDataset(IReadOnlyList<DemoTask> Train, IReadOnlyList<DemoTask> Test)
{
    /// <summary>The family names, in table order.</summary>
    public static IReadOnlyList<string> Families { get; } = ["arithmetic", "reverse", "sort", "count", "format"];

    /// <summary>
    /// Draws <paramref name="testPerFamily"/> distinct test items per family, then
    /// <paramref name="trainPerFamily"/> training items per family from the same generator (seeded with
    /// <paramref name="seed"/>), rejecting every draw that is a test item. Training items may repeat
    /// (the arithmetic family has only 1,620 items), test items never do.
    /// </summary>
    public static DemoDataset Generate(ulong seed, int trainPerFamily, int testPerFamily)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(trainPerFamily, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(testPerFamily, 1);
        var rng = new Generator(seed);
        var train = new List<DemoTask>();
        var test = new List<DemoTask>();
        foreach (var family in Families)
        {
            var held = new HashSet<string>(StringComparer.Ordinal);
            while (held.Count < testPerFamily)
            {
                var task = NewTask(family, rng);
                if (held.Add(task.ItemKey)) test.Add(task);
            }
            for (int n = 0; n < trainPerFamily;)
            {
                var task = NewTask(family, rng);
                if (held.Contains(task.ItemKey)) continue;
                train.Add(task);
                n++;
            }
        }
        return new DemoDataset(train, test);
    }

    /// <summary>One random item of a family.</summary>
    public static DemoTask NewTask(string family, Generator rng) => family switch
    {
        "arithmetic" => Arithmetic(rng),
        "reverse" => Reverse(rng),
        "sort" => Sort(rng),
        "count" => Count(rng),
        "format" => Format(rng),
        _ => throw new ArgumentException($"unknown task family '{family}'"),
    };

    // ---------------- the families ----------------

    // A two-digit number plus or minus one digit, with a two-digit result: copy the tens, change the
    // units, carry or borrow.
    private static DemoTask Arithmetic(Generator rng)
    {
        bool add = rng.NextInt(2) == 0;
        int a = (add ? 10 : 20) + rng.NextInt(80), b = 1 + rng.NextInt(9);
        int result = add ? a + b : a - b;
        string op = add ? "+" : "-", word = add ? "plus" : "minus";
        string question = Pick(rng, $"What is {a} {op} {b}?", $"Compute {a} {op} {b}.", $"Calculate {a} {op} {b}.");
        return new DemoTask("arithmetic", question, "", Num(result), $"{a} {word} {b} is");
    }

    private static DemoTask Reverse(Generator rng)
    {
        string w = Letters(rng, 3, 4);
        string r = Spaced(w.Reverse());
        return new DemoTask("reverse", Pick(rng, "Reverse the letters.", "Write the letters in reverse order.", "Spell it backwards."),
            Spaced(w), r, $"{Spaced(w)} reversed is");
    }

    private static DemoTask Sort(Generator rng)
    {
        int n = 3 + rng.NextInt(2);
        var digits = new char[n];
        for (int i = 0; i < n; i++) digits[i] = (char)('0' + rng.NextInt(10));
        string sorted = Spaced(digits.Order());
        return new DemoTask("sort", Pick(rng, "Sort the digits from smallest to largest.", "Put the digits in increasing order.", "Sort these digits."),
            Spaced(digits), sorted, $"{Spaced(digits)} sorted is");
    }

    private static DemoTask Count(Generator rng)
    {
        string w = Letters(rng, 2, 7);
        string n = Num(w.Length);
        return new DemoTask("count", Pick(rng, "Count the letters.", "How many letters are there?", "Say how many letters this has."),
            Spaced(w), n, $"the number of letters in {Spaced(w)} is");
    }

    // Format conversion: capitals, or the letters joined by dashes.
    private static DemoTask Format(Generator rng)
    {
        string w = Letters(rng, 3, 4);
        if (rng.NextInt(2) == 0)
        {
            string upper = Spaced(w.ToUpperInvariant());
            return new DemoTask("format", Pick(rng, "Write the letters in capitals.", "Convert the letters to upper case.", "Make the letters uppercase."),
                Spaced(w), upper, $"{Spaced(w)} in capitals is");
        }
        string dashed = string.Join('-', w.ToCharArray());
        return new DemoTask("format", Pick(rng, "Join the letters with dashes.", "Put a dash between the letters.", "Write the letters joined by dashes."),
            Spaced(w), dashed, $"{Spaced(w)} with dashes is");
    }

    // ---------------- helpers ----------------

    private static string Pick(Generator rng, params string[] options) => options[rng.NextInt(options.Length)];

    private static string Num(int n) => n.ToString(CultureInfo.InvariantCulture);

    // Random lowercase letters, length in [min, max].
    private static string Letters(Generator rng, int min, int max)
    {
        int n = min + rng.NextInt(max - min + 1);
        var sb = new StringBuilder(n);
        for (int i = 0; i < n; i++) sb.Append((char)('a' + rng.NextInt(26)));
        return sb.ToString();
    }

    // "cat" -> "c a t".
    private static string Spaced(IEnumerable<char> chars) => string.Join(' ', chars);
}
