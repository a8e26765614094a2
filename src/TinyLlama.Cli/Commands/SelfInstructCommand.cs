// `tinyllama self-instruct`: grow an Alpaca data set from seed tasks with a model (Self-Instruct, Wang et al.
// 2022, in Stanford Alpaca's one-pass variant), filtered as the paper and Alpaca filter, optionally keeping
// only records a verifier confirms. The algorithm and its two modes are in
// TinyLlama.Training/SelfInstruct/SelfInstructGenerator.cs; this file reads the flags, loads the model,
// writes the records (Alpaca JSON Lines, atomically) and prints how many each filter removed.
using System.CommandLine;
using TinyLlama.Training.SelfInstruct;

namespace TinyLlama.Cli.Commands;

internal static class SelfInstructCommand
{
    public static Command Create()
    {
        var model = ModelCommands.ModelOption();
        var tokenizer = ModelCommands.TokenizerOption();
        var seedTasks = new Option<string>("--seed-tasks") { Description = "Seed tasks: Alpaca records (instruction, input, output) as JSON Lines or a JSON array", Required = true };
        var outFile = new Option<string>("--out") { Description = "Where to write the kept records (Alpaca JSON Lines)", Required = true };
        var count = new Option<int>("--count") { Description = "Records to keep", Required = true }.Range(1, OptionRange.MaxCount);
        var verifier = new Option<string?>("--verifier") { Description = $"Keep only records this verifier confirms ({string.Join(", ", OutputVerifiers.Names)})" };
        var mode = new Option<string>("--mode")
        {
            Description = "instructions: the model writes new tasks from a few-shot list (Self-Instruct); inputs: new inputs for the seeds' instructions, answered by the model through the Alpaca template (for a small instruction-tuned model such as the demo's)",
            DefaultValueFactory = _ => "instructions",
        };
        var maxAttempts = new Option<int>("--max-attempts") { Description = "Candidates to try at most (default 0: ten per --count)" }.Range(0, OptionRange.MaxCount);
        var examples = new Option<int>("--examples") { Description = "In-context tasks per prompt (instructions mode; default 4)", DefaultValueFactory = _ => 4 }.Range(1, 64);
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens the model may write per candidate (default 128)", DefaultValueFactory = _ => 128 }.Range(1, OptionRange.MaxCount);
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature of new tasks (instructions mode; default 1, as Alpaca)", DefaultValueFactory = _ => 1.0 }.Range(0, 1000);
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling threshold (1 = off)", DefaultValueFactory = _ => 1.0 }.Range(0, 1, minOpen: true);
        var seed = new Option<ulong>("--seed") { Description = "Seed of every random choice (same seed, same records)" };
        var minWords = new Option<int>("--min-words") { Description = "Fewest words a new instruction may have (default 3)", DefaultValueFactory = _ => 3 }.Range(0, OptionRange.MaxCount);
        var maxWords = new Option<int>("--max-words") { Description = "Most words a new instruction may have (default 150)", DefaultValueFactory = _ => 150 }.Range(1, OptionRange.MaxCount);
        var rouge = new Option<double>("--rouge-threshold") { Description = "Drop a new instruction whose ROUGE-L against any in the pool is at least this (default 0.7)", DefaultValueFactory = _ => 0.7 }.Range(0, 1, minOpen: true);
        var json = new Option<bool>("--json") { Description = "Print one JSON object with the counts instead of text" };
        var cmd = new Command("self-instruct", "Generate new Alpaca records from seed tasks with a model (Self-Instruct), filtered and optionally verified.")
        {
            model, tokenizer, seedTasks, outFile, count, verifier, mode, maxAttempts, examples, maxTokens, temperature, topP, seed, minWords, maxWords, rouge, json,
        };
        cmd.SetAction(parse =>
        {
            var selfInstructMode = parse.GetValue(mode) switch
            {
                "instructions" => SelfInstructMode.NewInstructions,
                "inputs" => SelfInstructMode.NewInputs,
                var other => throw new CliException($"--mode: expected instructions or inputs, got '{other}'", isUsage: true),
            };
            IOutputVerifier? check = null;
            if (parse.GetValue(verifier) is string name)
            {
                try { check = OutputVerifiers.ByName(name); }
                catch (ArgumentException e) { throw new CliException($"--verifier: {e.Message}", isUsage: true); }
            }
            int n = parse.GetValue(count), attempts = parse.GetValue(maxAttempts);
            if (parse.GetValue(minWords) > parse.GetValue(maxWords))
                throw new CliException($"--min-words ({parse.GetValue(minWords)}) must not exceed --max-words ({parse.GetValue(maxWords)})", isUsage: true);
            var options = new SelfInstructOptions
            {
                Count = n,
                MaxAttempts = attempts > 0 ? attempts : (int)Math.Min(10L * n, int.MaxValue),
                Mode = selfInstructMode,
                Examples = parse.GetValue(examples),
                GeneratedExamples = Math.Min(1, parse.GetValue(examples) - 1),
                MaxNewTokens = parse.GetValue(maxTokens),
                Temperature = parse.GetValue(temperature),
                TopP = parse.GetValue(topP),
                Seed = parse.GetValue(seed),
                Verifier = check,
                Filters = new SelfInstructFilterOptions
                {
                    MinInstructionWords = parse.GetValue(minWords),
                    MaxInstructionWords = parse.GetValue(maxWords),
                    RougeLThreshold = parse.GetValue(rouge),
                },
            };
            string outPath = parse.GetValue(outFile)!;
            RequireWritable(outPath);
            string seedPath = parse.GetValue(seedTasks)!;
            TextFileOption.RequireFile(seedPath, "--seed-tasks");
            var seeds = InstructionRecord.ReadAll(seedPath);

            string path = parse.GetValue(model)!;
            var files = new ModelFiles();
            var lm = ModelCommands.LoadModel(path, files, DeviceOption.Resolve(parse));
            var tok = ModelCommands.LoadTokenizer(path, parse.GetValue(tokenizer), files);
            ModelCommands.CheckCacheMemory(lm.Config, lm.Config.MaxPositionEmbeddings, "self-instruct", "use a model with a shorter context");
            var result = SelfInstructGenerator.Run(lm, tok, seeds, options);
            InstructionRecord.WriteJsonLines(outPath, result.Records);
            Print(parse.InvocationConfiguration.Output, parse.GetValue(json), outPath, n, result.Report);
            return ExitCodes.Success;
        });
        return cmd;
    }

    // Fail before minutes of generation, not after: the output's directory must exist and the path must not be one.
    private static void RequireWritable(string path)
    {
        if (Directory.Exists(path)) throw new CliException($"--out: {path} is a directory; expected a file");
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null && !Directory.Exists(dir)) throw new CliException($"--out: the directory {dir} does not exist");
    }

    private static void Print(TextWriter output, bool json, string outPath, int wanted, SelfInstructReport report)
    {
        if (json)
        {
            var fields = new List<(string, object?)> { ("out", outPath), ("candidates", report.Candidates), ("kept", report.Kept) };
            foreach (var (filter, removed) in report.ByFilter) fields.Add((filter, removed));
            output.WriteLine(JsonLine.Format([.. fields]));
            return;
        }
        output.WriteLine($"self-instruct: kept {report.Kept} of {report.Candidates} candidates -> {outPath}" +
            (report.Kept < wanted ? $" (asked for {wanted}; stopped at --max-attempts)" : ""));
        output.WriteLine("  removed: " + string.Join(", ", report.ByFilter.Select(f => $"{f.Filter} {f.Removed}")));
    }
}
