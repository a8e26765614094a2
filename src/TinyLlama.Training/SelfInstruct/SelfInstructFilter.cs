// Self-Instruct's filters (Wang et al. 2022, section 2.2 "Filtering and postprocessing"; Stanford Alpaca's
// generate_instruction.py), applied in this order; a candidate is removed by the first it fails and counted
// under that filter, so the counts add up to the candidates:
//   1. malformed: the continuation did not parse into instruction, input and output (SelfInstructPrompt.Parse);
//   2. too short / too long: the instruction's whitespace-separated words outside [min, max] (Alpaca drops
//      3 words or fewer and more than 150);
//   3. blacklisted: the instruction holds, as whole words and in any case, one of Alpaca's keywords for
//      what a text model cannot do (image, graph, picture, file, map, draw, plot, go to, video, audio,
//      music, flowchart, diagram and their plurals);
//   4. duplicate: the same (instruction, input) as a seed or a record already kept; held out: one of the
//      evaluation items (SelfInstructFilterOptions.HeldOut; decontamination, as instruction-tuning data is
//      cleaned of benchmark items), whatever its output;
//   5. too similar: ROUGE-L of the instruction against any instruction in the pool (seeds and kept) >= 0.7;
//   6. with a verifier: rejected when it finds the output wrong, unverifiable when it cannot check (a
//      verifier means "keep only verified records").
// Filters 2, 3 and 5 judge a new instruction; when the generator writes new inputs for the seeds'
// instructions (SelfInstructMode.NewInputs) the instruction is a seed's and they are switched off.
using System.Text.RegularExpressions;

namespace TinyLlama.Training.SelfInstruct;

/// <summary>Why a candidate was kept or removed.</summary>
public enum CandidateVerdict
{
    /// <summary>Passed every filter.</summary>
    Kept,
    /// <summary>Not parsable into instruction, input and output, or with an empty instruction or output.</summary>
    Malformed,
    /// <summary>Fewer instruction words than the minimum.</summary>
    TooShort,
    /// <summary>More instruction words than the maximum.</summary>
    TooLong,
    /// <summary>The instruction holds a blacklisted keyword.</summary>
    Blacklisted,
    /// <summary>The same instruction and input as a record in the pool.</summary>
    Duplicate,
    /// <summary>An evaluation item (<see cref="SelfInstructFilterOptions.HeldOut"/>): removed so no test item is trained on.</summary>
    HeldOut,
    /// <summary>ROUGE-L against an instruction in the pool at or over the threshold.</summary>
    TooSimilar,
    /// <summary>The verifier found the output wrong.</summary>
    VerifierRejected,
    /// <summary>The verifier could not check the record.</summary>
    Unverifiable,
}

/// <summary>Settings of the filters.</summary>
public sealed record SelfInstructFilterOptions
{
    /// <summary>Alpaca's keyword blacklist.</summary>
    public static IReadOnlyList<string> AlpacaBlacklist { get; } =
        ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
         "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"];

    /// <summary>Fewest words an instruction may have (Alpaca: 4).</summary>
    public int MinInstructionWords { get; init; } = 3;
    /// <summary>Most words an instruction may have (Alpaca: 150).</summary>
    public int MaxInstructionWords { get; init; } = 150;
    /// <summary>A candidate whose instruction has ROUGE-L at or over this against the pool is removed (Self-Instruct: 0.7).</summary>
    public double RougeLThreshold { get; init; } = 0.7;
    /// <summary>Keywords (whole words, any case) an instruction may not contain.</summary>
    public IReadOnlyList<string> Blacklist { get; init; } = AlpacaBlacklist;
    /// <summary>Whether filters 2, 3 and 5 (which judge the instruction) run.</summary>
    public bool CheckInstruction { get; init; } = true;
    /// <summary>
    /// Decontamination: true for a record that is one of the evaluation items (its instruction and input), which
    /// is removed however right its output is, so that no held-out item reaches the training data. Null: none.
    /// </summary>
    public Func<InstructionRecord, bool>? HeldOut { get; init; }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first bad setting.</summary>
    public void Validate()
    {
        if (MinInstructionWords < 0) throw new ArgumentException($"the minimum instruction words must be >= 0, got {MinInstructionWords}");
        if (MaxInstructionWords < MinInstructionWords) throw new ArgumentException($"the maximum instruction words ({MaxInstructionWords}) is below the minimum ({MinInstructionWords})");
        if (!(RougeLThreshold > 0 && RougeLThreshold <= 1)) throw new ArgumentException($"the ROUGE-L threshold must be in (0, 1], got {RougeLThreshold}");
        ArgumentNullException.ThrowIfNull(Blacklist);
    }
}

/// <summary>How many candidates each filter removed, and how many were kept.</summary>
public sealed record SelfInstructReport(int Candidates, int Kept, int Malformed, int TooShort, int TooLong, int Blacklisted,
    int Duplicates, int TooSimilar, int VerifierRejected, int Unverifiable, int HeldOut = 0)
{
    /// <summary>Candidates removed by any filter.</summary>
    public int Removed => Malformed + TooShort + TooLong + Blacklisted + Duplicates + HeldOut + TooSimilar + VerifierRejected + Unverifiable;

    /// <summary>Each filter's name (as the command line prints it) and count, in filter order.</summary>
    public IReadOnlyList<(string Filter, int Removed)> ByFilter =>
    [
        ("malformed", Malformed), ("too_short", TooShort), ("too_long", TooLong), ("blacklisted", Blacklisted),
        ("duplicate", Duplicates), ("held_out", HeldOut), ("rouge_l", TooSimilar), ("verifier_rejected", VerifierRejected), ("unverifiable", Unverifiable),
    ];
}

/// <summary>The filters over a growing pool (seeds, then each kept candidate).</summary>
public sealed class SelfInstructFilter
{
    private readonly SelfInstructFilterOptions options;
    private readonly IOutputVerifier? verifier;
    private readonly Regex? blacklist;
    private readonly RougeLPool instructions = new();
    private readonly HashSet<(string, string)> seen = [];
    private readonly int[] counts = new int[Enum.GetValues<CandidateVerdict>().Length];

    /// <summary>Filters against <paramref name="seeds"/>; <paramref name="verifier"/> null keeps outputs unchecked.</summary>
    public SelfInstructFilter(SelfInstructFilterOptions options, IOutputVerifier? verifier, IEnumerable<InstructionRecord> seeds)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(seeds);
        options.Validate();
        this.options = options;
        this.verifier = verifier;
        var words = options.Blacklist.Where(w => w.Trim().Length > 0).Select(w => Regex.Escape(w.Trim())).ToList();
        if (words.Count > 0)
            blacklist = new Regex(@"\b(" + string.Join("|", words) + @")\b", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);
        foreach (var seed in seeds) AddToPool(seed);
    }

    /// <summary>Counts so far.</summary>
    public SelfInstructReport Report => new(counts.Sum(), Count(CandidateVerdict.Kept), Count(CandidateVerdict.Malformed),
        Count(CandidateVerdict.TooShort), Count(CandidateVerdict.TooLong), Count(CandidateVerdict.Blacklisted), Count(CandidateVerdict.Duplicate),
        Count(CandidateVerdict.TooSimilar), Count(CandidateVerdict.VerifierRejected), Count(CandidateVerdict.Unverifiable), Count(CandidateVerdict.HeldOut));

    /// <summary>Runs the filters on one candidate (null: it did not parse), counts the verdict, and adds a kept candidate to the pool.</summary>
    public CandidateVerdict Consider(InstructionRecord? candidate)
    {
        var verdict = Judge(candidate);
        counts[(int)verdict]++;
        if (verdict == CandidateVerdict.Kept) AddToPool(candidate!);
        return verdict;
    }

    private CandidateVerdict Judge(InstructionRecord? c)
    {
        if (c is null || c.Instruction.Trim().Length == 0 || c.Output.Trim().Length == 0) return CandidateVerdict.Malformed;
        if (options.CheckInstruction)
        {
            int words = c.Instruction.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;
            if (words < options.MinInstructionWords) return CandidateVerdict.TooShort;
            if (words > options.MaxInstructionWords) return CandidateVerdict.TooLong;
            if (blacklist is not null && blacklist.IsMatch(c.Instruction)) return CandidateVerdict.Blacklisted;
        }
        if (seen.Contains(Key(c))) return CandidateVerdict.Duplicate;
        if (options.HeldOut?.Invoke(c) == true) return CandidateVerdict.HeldOut;
        if (options.CheckInstruction && instructions.MaxFMeasure(c.Instruction) >= options.RougeLThreshold) return CandidateVerdict.TooSimilar;
        if (verifier is not null)
        {
            bool? ok = verifier.Verify(c.Instruction, c.Input, c.Output);
            if (ok is null) return CandidateVerdict.Unverifiable;
            if (ok == false) return CandidateVerdict.VerifierRejected;
        }
        return CandidateVerdict.Kept;
    }

    private void AddToPool(InstructionRecord record)
    {
        seen.Add(Key(record));
        instructions.Add(record.Instruction);
    }

    private static (string, string) Key(InstructionRecord r) => (r.Instruction.Trim(), r.Input.Trim());

    private int Count(CandidateVerdict v) => counts[(int)v];
}
