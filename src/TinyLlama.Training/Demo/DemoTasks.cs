// The demo's synthetic instruction data: five families of small tasks with short exact answers, each
// item written two ways:
//   - as a plain sentence for pre-training ("c a t reversed is t a c."), the way facts appear in a
//     corpus, with no instruction and no template;
//   - as an Alpaca record for instruction tuning: a short instruction ("Reverse the letters."), the item
//     as the input ("c a t") and the answer as the output.
// Letters and digits are written one per word ("c a t", "5 2 8") so every item is a sequence of
// single-character tokens: the tasks are then small algorithms over characters (copy backwards, map to
// capitals, sort, count, carry a digit) that a tiny model can learn and apply to items it never saw.
//
// Why the item goes in the input field: in the template the input is always the last thing before
// "### Response:", so the item sits at one fixed distance from the answer, much as in the sentences
// the base model learnt. When the item was inside the instruction ("Reverse the letters c a t.", "What
// is 47 + 3?"), its distance from the answer varied with the wording, and the adapter had to re-learn
// where to look rather than only the format. Those families' answers were the borderline ones: on seed
// 0 the median margin of the right answer's token over the runner-up (teacher-forced, the weakest token
// of each answer) was -0.38 nats for format and 1.56 for arithmetic, against 3.8 and 6.7 for sort and
// count, whose items were already inputs; such answers flip when float sums round differently. With
// every item an input, the same seed's median margins are 2.9-7.7 nats and format went from 18 to 36
// of 40.
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
/// <param name="Item">The item itself, however it is worded ("47 + 3", "cat", "capitals cat").</param>
/// <param name="Instruction">The Alpaca instruction.</param>
/// <param name="Input">The Alpaca input: the item's letters, digits or sum ("c a t", "47 + 3").</param>
/// <param name="Answer">The exact expected answer.</param>
/// <param name="Statement">The item as the start of a plain sentence that the answer completes ("c a t reversed is"; one of a few wordings).</param>
public sealed record DemoTask(string Family, string Item, string Instruction, string Input, string Answer, string Statement)
{
    /// <summary>The item as a plain pre-training sentence: the statement, the answer, a full stop.</summary>
    public string Fact => Statement + " " + Answer + ".";

    /// <summary>What must differ between training and test items: the family and the item, whatever the wording.</summary>
    public string ItemKey => Family + "|" + Item;

    /// <summary>
    /// The family and the input as an Alpaca record shows them (the two format kinds share one: "format|c a t"):
    /// what <see cref="DemoDataset.InputKey"/> finds for any record of this item, to keep held-out items out of
    /// generated training data.
    /// </summary>
    public string InputKey => Family + "|" + Input;

    /// <summary>
    /// The Alpaca output: the answer after one space. The prompt ends in "### Response:" and the output
    /// follows it directly, so the space makes the answer's first character the same token ("▁t") as in
    /// the pre-training sentences; <see cref="DemoEvaluation"/> trims it before comparing.
    /// </summary>
    public string Output => " " + Answer;
}

/// <summary>The demo's train and held-out test items.</summary>
/// <param name="Train">Items for pre-training sentences and fine-tuning records.</param>
/// <param name="Test">Held-out items: none of them (family and item, in any wording) occurs in <paramref name="Train"/>.</param>
public sealed record DemoDataset(IReadOnlyList<DemoTask> Train, IReadOnlyList<DemoTask> Test)
{
    /// <summary>The first <paramref name="perFamily"/> training items of each family (the instruction-tuning set).</summary>
    public IReadOnlyList<DemoTask> InstructionItems(int perFamily) =>
        Families.SelectMany(f => Train.Where(t => t.Family == f).Take(perFamily)).ToList();

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

    /// <summary>
    /// Up to <paramref name="perFamily"/> distinct items of each family that are neither training nor test items
    /// (nor in <paramref name="excluded"/>, by <see cref="DemoTask.ItemKey"/>), drawn from a generator seeded with
    /// <paramref name="seed"/>: held-out items beyond the test set, where a family's item space has them. The
    /// arithmetic family's 480 items are all training or test items, so it gets none; a family stops after
    /// 50 draws per item asked for, so a small space ends the search instead of looping.
    /// </summary>
    public IReadOnlyList<DemoTask> FreshItems(ulong seed, int perFamily, IReadOnlySet<string>? excluded = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(perFamily);
        var taken = new HashSet<string>(Train.Select(t => t.ItemKey).Concat(Test.Select(t => t.ItemKey)), StringComparer.Ordinal);
        if (excluded is not null) taken.UnionWith(excluded);
        var rng = new Generator(seed);
        var fresh = new List<DemoTask>();
        foreach (var family in Families)
        {
            int found = 0;
            for (long draws = 0; found < perFamily && draws < 50L * perFamily; draws++)
            {
                var task = NewTask(family, rng);
                if (!taken.Add(task.ItemKey)) continue;
                fresh.Add(task);
                found++;
            }
        }
        return fresh;
    }

    /// <summary>The <see cref="DemoTask.InputKey"/> of a record with this instruction and input (the family found by <see cref="FamilyOf"/>).</summary>
    public static string InputKey(string instruction, string input) => FamilyOf(instruction) + "|" + input.Trim();

    /// <summary>
    /// The family an instruction belongs to ("format" for both of its kinds), or null for an instruction none of
    /// the families uses.
    /// </summary>
    public static string? FamilyOf(string instruction)
    {
        string trimmed = instruction.Trim();
        foreach (var (kind, wordings) in InstructionWordings)
            if (wordings.Contains(trimmed, StringComparer.Ordinal)) return kind is "capitals" or "commas" ? "format" : kind;
        return null;
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

    // ---------------- the instruction wordings ----------------
    // Each family's instructions, one of which every item picks; the verifier (SelfInstruct/DemoTaskVerifier)
    // recognises a family by them. Format has two kinds of item, so two lists.

    private static readonly string[] ArithmeticWordings = ["Compute the result.", "Calculate this.", "Work out the answer."];
    private static readonly string[] ReverseWordings = ["Reverse the letters.", "Write these letters backwards.", "Spell this in reverse order."];
    private static readonly string[] SortWordings = ["Sort the digits from smallest to largest.", "Put the digits in increasing order.", "Sort these digits."];
    private static readonly string[] CountWordings = ["Count the letters.", "How many letters are there?", "Say how many letters this has."];
    private static readonly string[] CapitalsWordings = ["Write these letters in capitals.", "Convert to upper case.", "Make the letters uppercase."];
    private static readonly string[] CommasWordings = ["Separate the letters with commas.", "Put commas between the letters.", "Write the letters as a comma-separated list."];

    /// <summary>
    /// Every instruction an item may carry, by kind of item: "arithmetic", "reverse", "sort", "count", and the
    /// format family's two kinds, "capitals" and "commas".
    /// </summary>
    public static IReadOnlyList<(string Kind, IReadOnlyList<string> Wordings)> InstructionWordings { get; } =
    [
        ("arithmetic", ArithmeticWordings), ("reverse", ReverseWordings), ("sort", SortWordings),
        ("count", CountWordings), ("capitals", CapitalsWordings), ("commas", CommasWordings),
    ];

    // ---------------- the families ----------------

    // A two-digit number plus or minus 1, 2 or 3, with a two-digit result: copy the tens, change the
    // units, carry or borrow.
    private static DemoTask Arithmetic(Generator rng)
    {
        bool add = rng.NextInt(2) == 0;
        int a = (add ? 10 : 20) + rng.NextInt(80), b = 1 + rng.NextInt(3);
        int result = add ? a + b : a - b;
        string op = add ? "+" : "-";
        string question = Pick(rng, ArithmeticWordings);
        string statement = add
            ? Pick(rng, $"{a} plus {b} is", $"{a} + {b} =", $"adding {b} to {a} gives")
            : Pick(rng, $"{a} minus {b} is", $"{a} - {b} =", $"taking {b} from {a} leaves");
        return new DemoTask("arithmetic", $"{a} {op} {b}", question, $"{a} {op} {b}", Num(result), statement);
    }

    private static DemoTask Reverse(Generator rng)
    {
        string w = Letters(rng, 3, 4), s = Spaced(w);
        return new DemoTask("reverse", w, Pick(rng, ReverseWordings),
            s, Spaced(w.Reverse()), Pick(rng, $"{s} reversed is", $"reverse the letters {s} and you get", $"the letters {s} written backwards are"));
    }

    private static DemoTask Sort(Generator rng)
    {
        int n = 3 + rng.NextInt(2);
        var digits = new char[n];
        for (int i = 0; i < n; i++) digits[i] = (char)('0' + rng.NextInt(10));
        string s = Spaced(digits);
        return new DemoTask("sort", new string(digits), Pick(rng, SortWordings),
            s, Spaced(digits.Order()), Pick(rng, $"{s} sorted is", $"sorting the digits {s} from small to large gives", $"the digits {s} in increasing order are"));
    }

    private static DemoTask Count(Generator rng)
    {
        string w = Letters(rng, 2, 7), s = Spaced(w);
        return new DemoTask("count", w, Pick(rng, CountWordings),
            s, Num(w.Length), Pick(rng, $"the number of letters in {s} is", $"counting the letters {s} gives", $"the letters {s} are this many:"));
    }

    // Format conversion: capitals, or the letters separated by commas.
    private static DemoTask Format(Generator rng)
    {
        string w = Letters(rng, 3, 4), s = Spaced(w);
        if (rng.NextInt(2) == 0)
            return new DemoTask("format", "capitals " + w, Pick(rng, CapitalsWordings),
                s, Spaced(w.ToUpperInvariant()), Pick(rng, $"{s} in capitals is", $"writing {s} in upper case gives", $"the letters {s} as capitals are"));
        return new DemoTask("format", "commas " + w, Pick(rng, CommasWordings),
            s, string.Join(", ", w.ToCharArray()), Pick(rng, $"{s} with commas is", $"separating {s} with commas gives", $"the letters {s} split by commas are"));
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
