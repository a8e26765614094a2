// The built-in demo: its BPE trainer (round trip, merges that shorten the text, digits kept apart, the
// tokenizer.json it writes loads and encodes the same), its data (deterministic, held-out items in no
// training text, every item in the Alpaca input field). The demo itself runs in QuickDemoTests.
using TinyLlama.Tests.Formats;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;
using TinyLlama.Training.Demo;

namespace TinyLlama.Tests.Training;

public class DemoTests
{
    private static readonly string[] Corpus =
    [
        "the cat sat on the mat",
        "the cats sat on the mats",
        "a hat on the cat, a mat on the hat",
        "c a t reversed is t a c.",
        "47 plus 3 is 50.",
        "Below is an instruction that describes a task.\n\n### Response:",
    ];

    [Fact]
    public void BpeTokenizerRoundTripsAnyText()
    {
        var tok = BpeTrainer.Train(Corpus, 40).ToTokenizer();
        string[] texts =
        [
            .. Corpus, "", " leading space", "double  space", "unseen: ZQX 1234 ü é 🙂", "tab\tand\nnewline", "<s> is text, not BOS",
        ];
        foreach (var text in texts)
            Assert.Equal(text, tok.Decode(tok.Encode(text)));
    }

    [Fact]
    public void MergesShortenTheCorpusAndRespectTheLetterRule()
    {
        var none = BpeTrainer.Train(Corpus, 0);
        var some = BpeTrainer.Train(Corpus, 40);
        Assert.Empty(none.Merges);
        Assert.NotEmpty(some.Merges);
        Assert.True(some.Merges.Count <= 40);
        int before = Corpus.Sum(t => none.ToTokenizer().Encode(t).Length);
        int after = Corpus.Sum(t => some.ToTokenizer().Encode(t).Length);
        Assert.True(after < before * 0.8, $"{before} tokens without merges, {after} with");
        // The most frequent pair comes first. Words start as single characters with '▁' a symbol of its
        // own, so counting by hand: "a" + "t" occurs 11 times (cat, sat, mat, cats, mats, hat, that),
        // "▁" + "t" 9 times (the x6, t, that, task), "t" + "h" 7 times.
        Assert.Equal(("a", "t"), some.Merges[0]);
        foreach (var (left, right) in some.Merges) Assert.True(BpeTrainer.CanMerge(left, right), $"{left} + {right}");
        Assert.False(BpeTrainer.CanMerge("4", "7"));
        Assert.False(BpeTrainer.CanMerge("\u2581", "4"));
        Assert.False(BpeTrainer.CanMerge("t", "."));
        Assert.False(BpeTrainer.CanMerge("a", "\u2581b"));
        Assert.True(BpeTrainer.CanMerge("\u2581", "c"));
        // Digits stay single characters; the corpus has 3 and 4 but not 1 or 2, which fall back to bytes.
        var tok = some.ToTokenizer();
        Assert.Equal(["\u2581", "<0x31>", "<0x32>", "3", "4"], tok.Encode("1234").Select(tok.IdToPiece).ToArray());
        // Layout: <unk>, <s>, </s>, 256 bytes, then characters and merges, every piece once.
        Assert.Equal(["<unk>", "<s>", "</s>", "<0x00>"], some.Pieces.Take(4).ToArray());
        Assert.Equal(some.Pieces.Count, some.Pieces.Distinct().Count());
        Assert.Equal(0, tok.UnkId);
        Assert.Equal(1, tok.BosId);
        Assert.Equal(2, tok.EosId);
    }

    [Fact]
    public void BpeTrainingIsDeterministic()
    {
        var a = BpeTrainer.Train(Corpus, 40);
        var b = BpeTrainer.Train(Corpus.Reverse(), 40);
        Assert.Equal(a.Merges, b.Merges);
        Assert.Equal(a.Pieces, b.Pieces);
    }

    [Fact]
    public void SavedTokenizerJsonLoadsAndEncodesTheSame()
    {
        using var dir = new TempDir();
        var vocab = BpeTrainer.Train(Corpus, 40);
        vocab.SaveHuggingFaceJson(dir.File("tokenizer.json"));
        var inMemory = vocab.ToTokenizer();
        var loaded = LlamaTokenizer.Load(dir.Path);
        Assert.True(loaded.UsesMergeRanks);
        Assert.Equal(inMemory.VocabSize, loaded.VocabSize);
        Assert.Equal((1, 2, 0), (loaded.BosId, loaded.EosId, loaded.UnkId));
        foreach (var text in Corpus.Append("unseen ü 🙂 text 99"))
        {
            Assert.Equal(inMemory.Encode(text, addBos: true), loaded.Encode(text, addBos: true));
            Assert.Equal(text, loaded.Decode(loaded.Encode(text)));
        }
    }

    [Fact]
    public void DatasetIsDeterministicAndHeldOutItemsAreInNoTrainingText()
    {
        var a = DemoDataset.Generate(7, 200, 20);
        var b = DemoDataset.Generate(7, 200, 20);
        var c = DemoDataset.Generate(8, 200, 20);
        Assert.Equal(a.Train, b.Train);
        Assert.Equal(a.Test, b.Test);
        Assert.NotEqual(a.Test, c.Test);
        Assert.Equal(200 * DemoDataset.Families.Count, a.Train.Count);
        Assert.Equal(20 * DemoDataset.Families.Count, a.Test.Count);
        foreach (var family in DemoDataset.Families)
            Assert.Equal(20, a.Test.Count(t => t.Family == family));
        Assert.Equal(a.Test.Count, a.Test.Select(t => t.ItemKey).Distinct().Count());
        var trainKeys = a.Train.Select(t => t.ItemKey).ToHashSet();
        Assert.DoesNotContain(a.Test, t => trainKeys.Contains(t.ItemKey));
        // No held-out fact sentence occurs in the pre-training text or the tokenizer corpus.
        var documents = DemoData.PretrainingDocuments(a.Train, 6, 7);
        var lines = documents.SelectMany(d => d.Split('\n')).ToHashSet();
        Assert.Equal(a.Train.Count, documents.Sum(d => d.Split('\n').Length));
        Assert.DoesNotContain(a.Test, t => lines.Contains(t.Fact));
        var corpus = string.Join("\n", DemoData.TokenizerCorpus(documents, a.Train));
        Assert.DoesNotContain(a.Test, t => corpus.Contains(t.Fact, StringComparison.Ordinal));
    }

    [Fact]
    public void FreshItemsAreDistinctDeterministicAndInNoTrainingOrTestSet()
    {
        var data = DemoDataset.Generate(7, 8000, 40);
        var excluded = new HashSet<string>(StringComparer.Ordinal) { data.FreshItems(3, 1)[0].ItemKey };
        var fresh = data.FreshItems(3, 300, excluded);
        Assert.Equal(fresh, data.FreshItems(3, 300, excluded));
        Assert.Equal(fresh.Count, fresh.Select(t => t.ItemKey).Distinct().Count());
        var taken = data.Train.Concat(data.Test).Select(t => t.ItemKey).Concat(excluded).ToHashSet();
        Assert.DoesNotContain(fresh, t => taken.Contains(t.ItemKey));
        // Every family but arithmetic has room for 300 more; arithmetic's 480 items are all drawn by 8,000 training
        // draws and 40 test items, so the bounded search ends with none rather than looping.
        foreach (var family in DemoDataset.Families.Where(f => f != "arithmetic"))
            Assert.Equal(300, fresh.Count(t => t.Family == family));
        Assert.Equal(480, data.Train.Concat(data.Test).Where(t => t.Family == "arithmetic").Select(t => t.ItemKey).Distinct().Count());
        Assert.DoesNotContain(fresh, t => t.Family == "arithmetic");
    }

    [Fact]
    public void EveryInstructionWordingNamesItsFamilyAndARecordFindsItsItem()
    {
        foreach (var family in DemoDataset.Families)
        {
            var rng = new TinyLlama.Tensors.Generator(5);
            for (int i = 0; i < 60; i++)
            {
                var task = DemoDataset.NewTask(family, rng);
                Assert.Equal(family, DemoDataset.FamilyOf(task.Instruction));
                Assert.Equal(family, DemoDataset.FamilyOf("  " + task.Instruction + " "));
                Assert.Equal(task.InputKey, DemoDataset.InputKey(task.Instruction, task.Input + " "));
            }
        }
        Assert.Null(DemoDataset.FamilyOf("Write a poem."));
    }

    // McNemar's paired test with continuity correction, against values worked by hand: only the discordant items
    // count; (|b - c| - 1)^2 / (b + c) must exceed 3.841 (chi-square, 1 degree of freedom, 5%).
    [Theory]
    [InlineData(4, 0, false)]   // (4 - 1)^2 / 4 = 2.25
    [InlineData(5, 0, false)]   // 16 / 5 = 3.2
    [InlineData(6, 0, true)]    // 25 / 6 = 4.17
    [InlineData(12, 4, false)]  // 49 / 16 = 3.06
    [InlineData(13, 3, true)]   // 81 / 16 = 5.06
    [InlineData(40, 36, false)] // 9 / 76 = 0.12
    [InlineData(0, 6, false)]   // 25 / 6, but worse
    public void PairedComparisonCountsOnlyDiscordantItems(int gained, int lost, bool expected)
    {
        var baseline = new List<bool>();
        var candidate = new List<bool>();
        void Add(bool b, bool c, int n) { for (int i = 0; i < n; i++) { baseline.Add(b); candidate.Add(c); } }
        Add(true, true, 500);
        Add(false, false, 17);
        Add(false, true, gained);
        Add(true, false, lost);
        var (g, l, better) = DemoEvaluation.Compare(baseline, candidate);
        Assert.Equal((gained, lost), (g, l));
        Assert.Equal(expected, better);
    }

    [Fact]
    public void TasksAreSelfConsistent()
    {
        var data = DemoDataset.Generate(3, 100, 10);
        foreach (var t in data.Train.Concat(data.Test))
        {
            Assert.Equal(t.Statement + " " + t.Answer + ".", t.Fact);
            Assert.Equal(" " + t.Answer, t.Output);
            var item = t.Item.Split(' ')[^1]; // the letters or digits ("capitals cat" -> "cat")
            // The item is the Alpaca input, so it ends every prompt at the same distance from the answer.
            Assert.Equal(t.Family == "arithmetic" ? t.Item : string.Join(' ', item.ToCharArray()), t.Input);
            switch (t.Family)
            {
                case "reverse": Assert.Equal(string.Join(' ', item.Reverse()), t.Answer); break;
                case "sort": Assert.Equal(string.Join(' ', item.Order()), t.Answer); break;
                case "count": Assert.Equal(item.Length.ToString(System.Globalization.CultureInfo.InvariantCulture), t.Answer); break;
                case "format":
                    Assert.Equal(t.Item.StartsWith("capitals ", StringComparison.Ordinal) ? string.Join(' ', item.ToUpperInvariant().ToCharArray()) : string.Join(", ", item.ToCharArray()), t.Answer);
                    break;
                case "arithmetic":
                    var m = System.Text.RegularExpressions.Regex.Match(t.Input, @"^(\d+) ([+-]) (\d+)$");
                    Assert.True(m.Success, t.Input);
                    int x = int.Parse(m.Groups[1].Value), y = int.Parse(m.Groups[3].Value);
                    Assert.Equal((m.Groups[2].Value == "+" ? x + y : x - y).ToString(System.Globalization.CultureInfo.InvariantCulture), t.Answer);
                    break;
                default: Assert.Fail($"unknown family {t.Family}"); break;
            }
        }
    }

    [Fact]
    public void InstructionRecordsTrainOnlyTheAnswer()
    {
        var data = DemoDataset.Generate(1, 10, 2);
        var tok = BpeTrainer.Train(DemoData.TokenizerCorpus(DemoData.PretrainingDocuments(data.Train, 6, 1), data.Train), 100).ToTokenizer();
        var task = data.Train[0];
        var example = DemoData.Instruction(tok, task, "r");
        var targets = example.Labels.Where(l => l != TinyLlama.Training.TrainingInfo.IgnoreIndex).ToArray();
        Assert.Equal(tok.EosId, targets[^1]);
        Assert.Equal(task.Answer, tok.Decode(targets[..^1]).Trim());
        var prompt = AlpacaTemplate.EncodePrompt(tok, task.Instruction, task.Input);
        Assert.Equal(prompt, example.InputIds[..prompt.Length]);
        var doc = DemoData.Document(tok, task.Fact, "d");
        Assert.Equal(doc.InputIds, doc.Labels);
        Assert.Equal(task.Fact, tok.Decode(doc.InputIds));
    }
}
