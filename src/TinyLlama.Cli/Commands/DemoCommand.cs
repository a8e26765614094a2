// `tinyllama demo`: the whole story on a laptop CPU, nothing downloaded, same numbers every run.
//   1. synthetic instruction data (five task families) with held-out items that no training text contains;
//   2. a BPE tokenizer learned from the training text;
//   3. a small LLaMA (GQA, RoPE, SwiGLU) pre-trained from scratch on the tasks written as plain sentences;
//   4. LoRA instruction tuning on the Alpaca template;
//   5. exact-match accuracy on the held-out items, base model vs fine-tuned, per family;
//   6. a few held-out questions answered by the fine-tuned model;
//   7. everything written in the project's normal formats (tokenizer.json, a Hugging Face model
//      directory, a PEFT adapter directory), so `tinyllama generate --model <out>/adapter` works on it.
// The pieces live in TinyLlama.Training.Demo; this file runs them in order and prints the story.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using TinyLlama.Backends.Cpu;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;
using TinyLlama.Training.Demo;
using TinyLlama.Cli.Reporting;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Cli.Commands;

internal static class DemoCommand
{
    public const string DefaultOut = "demo-output";

    /// <summary>Pre-training documents that calibrate GPTQ for --quantize-base.</summary>
    private const int DemoCalibrationDocuments = 256;

    public static Command Create()
    {
        var outDir = new Option<string>("--out") { Description = $"Where to write the tokenizer, base model, adapter and loss curves (default ./{DefaultOut})", DefaultValueFactory = _ => DefaultOut };
        var quick = new Option<bool>("--quick") { Description = "A much smaller run (under a minute on two cores; it learns count and sort only), for tests and CI" };
        var seed = new Option<ulong>("--seed") { Description = "Seed for the data, the weights and the training order (default 0)" };
        var evalEvery = new Option<int>("--eval-every") { Description = "Also score the held-out items every N steps of pre-training and of tuning, to watch each skill appear (default 0: only at the end)" }.Range(0, OptionRange.MaxCount);
        var quantizeBase = new Option<string?>("--quantize-base") { Description = "Quantize the pre-trained base to q4_0 or q8_0 before LoRA tuning (QLoRA-style: the adapters train over the frozen blocks)" };
        var quantizeMethod = new Option<string>("--quantize-method") { Description = "With --quantize-base: gptq (calibrated on pre-training documents) or rtn", DefaultValueFactory = _ => "gptq" };
        var stage = new Option<string>("--stage")
        {
            Description = "sft: pre-training and LoRA instruction tuning (the default); preferences: Self-Instruct, DPO, a reward model and a pairwise judge over the tuned model a finished sft run left in --out (same --seed and --quick)",
            DefaultValueFactory = _ => "sft",
        };
        var cmd = new Command("demo", "Pre-train a small LLaMA from scratch, fine-tune it with LoRA to follow instructions, and compare before/after on held-out tasks.")
        {
            outDir, quick, seed, evalEvery, quantizeBase, quantizeMethod, stage,
        };
        cmd.SetAction(parse =>
        {
            var settings = parse.GetValue(quick) ? DemoSettings.Quick : DemoSettings.Full;
            switch (parse.GetValue(stage)!.ToLowerInvariant())
            {
                case "sft": break;
                case "preferences":
                    if (parse.GetValue(quantizeBase) is not null) throw new CliException("--quantize-base: applies to --stage sft only", isUsage: true);
                    DemoPreferencesStage.Run(settings, parse.GetValue(quick) ? DemoPreferenceSettings.Quick : DemoPreferenceSettings.Full,
                        parse.GetValue(seed), parse.GetValue(outDir)!, parse.InvocationConfiguration.Output);
                    return ExitCodes.Success;
                default: throw new CliException($"--stage: expected sft or preferences, got '{parse.GetValue(stage)}'", isUsage: true);
            }
            int every = parse.GetValue(evalEvery);
            QuantType? baseType = parse.GetValue(quantizeBase)?.ToLowerInvariant() switch
            {
                null => null,
                "q4_0" => QuantType.Q4_0,
                "q8_0" => QuantType.Q8_0,
                _ => throw new CliException($"--quantize-base: expected q4_0 or q8_0, got '{parse.GetValue(quantizeBase)}'", isUsage: true),
            };
            string method = parse.GetValue(quantizeMethod)!.ToLowerInvariant();
            if (method is not ("gptq" or "rtn")) throw new CliException($"--quantize-method: expected gptq or rtn, got '{parse.GetValue(quantizeMethod)}'", isUsage: true);
            Run(settings, parse.GetValue(seed), parse.GetValue(outDir)!, parse.GetValue(quick) ? "quick" : "full", parse.InvocationConfiguration.Output, every,
                baseType, method == "gptq" ? QuantMethod.Gptq : QuantMethod.Rtn);
            return ExitCodes.Success;
        });
        return cmd;
    }

    /// <summary>Runs the demo with <paramref name="settings"/>, writing the story to <paramref name="output"/> and the artefacts under <paramref name="outPath"/>.</summary>
    /// <remarks>
    /// With <paramref name="evalEvery"/> &gt; 0 the held-out items are also scored every that many steps;
    /// scoring only reads the model (greedy decoding, no random numbers), so the run's numbers are the same.
    /// </remarks>
    internal static (DemoScore Base, DemoScore Tuned) Run(DemoSettings settings, ulong seed, string outPath, string runName, TextWriter output, int evalEvery = 0,
        QuantType? quantizeBase = null, QuantMethod quantizeMethod = QuantMethod.Gptq)
    {
        var total = Stopwatch.StartNew();
        var clock = Stopwatch.StartNew();
        outPath = Path.GetFullPath(outPath);
        string baseDir = Path.Combine(outPath, "base"), adapterDir = Path.Combine(outPath, "adapter"), dataDir = Path.Combine(outPath, "data");
        Directory.CreateDirectory(baseDir);
        Directory.CreateDirectory(adapterDir);
        Directory.CreateDirectory(dataDir);
        output.WriteLine($"TinyLlama demo ({runName} run, seed {seed}): pre-train a small LLaMA from scratch, then teach it to follow instructions with LoRA.");
        output.WriteLine($"CPU path: {CpuInfo.Describe()} (the exact counts depend on the vector width; README.md says which figures do not).");
        output.WriteLine();

        // ---- 1. data ----
        var data = DemoDataset.Generate(seed, settings.TrainPerFamily, settings.TestPerFamily);
        var documents = DemoData.PretrainingDocuments(data.Train, settings.FactsPerDocument, seed);
        var sftItems = data.InstructionItems(settings.SftPerFamily);
        output.WriteLine($"1. Data: {DemoDataset.Families.Count} task families, {data.Train.Count:N0} training items, {data.Test.Count:N0} held-out test items (in no training text).");
        foreach (var family in DemoDataset.Families)
        {
            var t = data.Train.First(x => x.Family == family);
            output.WriteLine($"   {family,-11} {Ask(t),-52} -> {t.Answer}");
        }
        output.WriteLine($"   Pre-training text is the same items as plain sentences, {settings.FactsPerDocument} per document, e.g. \"{data.Train[1].Fact}\"");
        output.WriteLine();

        // ---- 2. tokenizer ----
        var vocab = BpeTrainer.Train(DemoData.TokenizerCorpus(documents, sftItems), settings.Merges);
        string tokenizerPath = Path.Combine(outPath, "tokenizer.json");
        vocab.SaveHuggingFaceJson(tokenizerPath);
        var tok = LlamaTokenizer.Load(tokenizerPath); // what every later verb will load
        output.WriteLine($"2. Tokenizer: byte-pair encoding learned from the training text: {vocab.Merges.Count} merges, {tok.VocabSize} pieces (<unk> <s> </s>, 256 byte fallbacks, characters, merged pieces).");
        string sample = AlpacaTemplate.Prompt(data.Train[1].Instruction, data.Train[1].Input);
        var sampleIds = tok.Encode(sample);
        output.WriteLine($"   An Alpaca prompt of {sample.Length} characters is {sampleIds.Length} tokens; its instruction line is: {string.Join(" ", tok.Encode(data.Train[1].Instruction).Select(tok.IdToPiece))}");
        output.WriteLine();

        // ---- 3. model ----
        var config = settings.ModelConfig(tok.VocabSize);
        var lm = new LlamaForCausalLM(config, new Generator(seed ^ 0x5EED));
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"3. Model: LLaMA with C={config.HiddenSize}, {config.NumHiddenLayers} layers, {config.NumAttentionHeads} query heads sharing {config.NumKeyValueHeads} key/value heads (GQA), RoPE, SwiGLU, V={config.VocabSize}: {config.ParameterCount():N0} parameters."));
        output.WriteLine();

        // ---- 4. pre-training ----
        int maxLen = config.MaxPositionEmbeddings;
        var docExamples = documents.Select((d, i) => DemoData.Document(tok, d, $"document {i + 1}")).ToList();
        var pretrainLoader = new SftDataLoader(docExamples, settings.PretrainBatch, shuffle: true, seed, SftDataLoader.InputPadId(tok), maxLen);
        var pretrainer = new SftTrainer(lm, pretrainLoader, settings.PretrainOptions);
        output.WriteLine($"4. Pre-training (all weights) on {docExamples.Count:N0} plain-text documents ({docExamples.Sum(e => e.Length):N0} tokens; no instruction template): {settings.PretrainSteps} steps of {settings.PretrainBatch} documents.");
        Train(pretrainer, settings.PretrainSteps, output, evalEvery,
            () => $"completes {Families(DemoEvaluation.EvaluateCompletion(lm, tok, data.Test, settings.MaxAnswerTokens))} of the held-out sentences");
        lm.Eval();
        var completion = DemoEvaluation.EvaluateCompletion(lm, tok, data.Test, settings.MaxAnswerTokens);
        output.WriteLine($"   The base model completes {Families(completion)} of the held-out items written as plain sentences   ({Seconds(clock)})");
        SftCommand.SaveResult(baseDir, baseDir, lm, null, tokenizerPath);
        LossCurve.Save(Path.Combine(baseDir, "loss.png"), pretrainer.History.Select(h => (h.Step, h.Loss)).ToList(), [], "demo: pre-training");
        string basePath = baseDir;
        if (quantizeBase is { } quantType)
        {
            // QLoRA-style: the base's linear weights become frozen blocks (embedding and head q8_0) and the
            // adapters below train over them. GPTQ calibrates on the first pre-training documents.
            clock.Restart();
            var calibration = docExamples.Take(DemoCalibrationDocuments).Select(e => e.InputIds).ToList();
            var options = new ModelQuantizerOptions { Type = quantType, Method = quantizeMethod, Embedding = WeightFormat.Q8_0, Head = WeightFormat.Q8_0 };
            var weights = ModelQuantizer.Quantize(lm, quantizeMethod == QuantMethod.Gptq ? calibration : null, options);
            string typeName = quantType.Traits().Name, methodName = quantizeMethod == QuantMethod.Gptq ? $"GPTQ on {calibration.Count} pre-training documents" : "round to nearest";
            basePath = Path.Combine(outPath, $"base.{typeName}.gguf");
            GgufModel.Save(basePath, config, weights, tok);
            lm = LlamaForCausalLM.FromWeights(config, weights);
            lm.Eval();
            var quantCompletion = DemoEvaluation.EvaluateCompletion(lm, tok, data.Test, settings.MaxAnswerTokens);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"   Quantized to {typeName} ({methodName}; tensors: {QuantizeCommand.TensorFormats(weights.Values)}): {new FileInfo(basePath).Length:N0} bytes against {config.ParameterCount() * 4L:N0} in f32."));
            output.WriteLine($"   The {typeName} base completes {Families(quantCompletion)} of the held-out sentences   ({Seconds(clock)})");
        }
        output.WriteLine();

        // ---- 5. base model on the held-out instructions ----
        clock.Restart();
        var baseScore = DemoEvaluation.Evaluate(lm, tok, data.Test, settings.MaxAnswerTokens);

        // ---- 6. LoRA instruction tuning ----
        var rng = new Generator(seed ^ 0x10CA);
        var loraConfig = settings.Lora;
        TinyLlama.Training.Lora.Lora.Apply(lm, loraConfig, rng);
        var sftExamples = sftItems.Select((t, i) => DemoData.Instruction(tok, t, $"record {i + 1}")).ToList();
        var testExamples = data.Test.Select((t, i) => DemoData.Instruction(tok, t, $"test {i + 1}")).ToList();
        var sftLoader = new SftDataLoader(sftExamples, settings.SftBatch, shuffle: true, seed + 1, SftDataLoader.InputPadId(tok), maxLen);
        var tuner = new SftTrainer(lm, sftLoader, settings.SftOptions, rng: rng);
        long trainable = tuner.Trainable.Sum(p => (long)p.Param.Numel);
        var (baseLoss, _) = tuner.Evaluate(testExamples, settings.SftBatch, SftDataLoader.InputPadId(tok), maxLen);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"5. LoRA instruction tuning on {sftExamples.Count:N0} Alpaca records: rank {loraConfig.Rank} adapters on {string.Join(",", loraConfig.CanonicalTargets().Select(t => t.Replace("_proj", "")))} of every block, {trainable:N0} trainable parameters ({100.0 * trainable / config.ParameterCount():F1}% of the model), {settings.SftSteps} steps of {settings.SftBatch} records."));
        Train(tuner, settings.SftSteps, output, evalEvery,
            () => $"answers {Families(DemoEvaluation.Evaluate(lm, tok, data.Test, settings.MaxAnswerTokens))} of the held-out instructions");
        var (tunedLoss, _) = tuner.Evaluate(testExamples, settings.SftBatch, SftDataLoader.InputPadId(tok), maxLen);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"   Held-out response loss: base {baseLoss:F3} -> fine-tuned {tunedLoss:F3}   ({Seconds(clock)})"));
        SftCommand.SaveResult(adapterDir, basePath, lm, loraConfig, null);
        LossCurve.Save(Path.Combine(adapterDir, "loss.png"), tuner.History.Select(h => (h.Step, h.Loss)).ToList(), [], "demo: LoRA instruction tuning");
        output.WriteLine();

        // ---- 7. before / after ----
        clock.Restart();
        var tunedScore = DemoEvaluation.Evaluate(lm, tok, data.Test, settings.MaxAnswerTokens);
        output.WriteLine($"6. Held-out exact match (Alpaca prompt, greedy decoding until EOS, answer trimmed):   ({Seconds(clock)})");
        WriteTable(output, baseScore, tunedScore);
        output.WriteLine();

        // ---- 8. chat ----
        output.WriteLine("7. Chat with the fine-tuned model (held-out instructions):");
        var shown = DemoDataset.Families.Select(f => data.Test.Last(t => t.Family == f)).Take(settings.ChatExamples);
        foreach (var t in shown)
        {
            string answer = DemoEvaluation.Answer(lm, tok, t, settings.MaxAnswerTokens);
            output.WriteLine($"   > {Ask(t)}");
            output.WriteLine($"   {answer}   {(answer == t.Answer ? "(correct)" : $"(expected {t.Answer})")}");
        }
        output.WriteLine();

        // ---- 9. artefacts ----
        WriteData(dataDir, data, documents);
        var promptFile = Path.Combine(dataDir, "prompt.txt");
        var example = data.Test.Last(t => t.Family == "reverse");
        AtomicFile.WriteAllText(promptFile, AlpacaTemplate.Prompt(example.Instruction, example.Input));
        output.WriteLine($"8. Wrote to {outPath}:");
        output.WriteLine("   tokenizer.json    the BPE tokenizer (Hugging Face format)");
        output.WriteLine("   base/             the pre-trained model (config.json, model.safetensors, tokenizer.json, loss.png)");
        if (basePath != baseDir)
            output.WriteLine($"   {Path.GetFileName(basePath),-17} the quantized base (GGUF, tokenizer inside) that the adapter was trained over");
        output.WriteLine("   adapter/          the LoRA adapter (PEFT: adapter_config.json, adapter_model.safetensors; loss.png)");
        output.WriteLine("   data/             train.json and test.json (Alpaca records), pretrain.txt, heldout.txt (the test items as sentences), prompt.txt");
        output.WriteLine($"   Try: tinyllama generate --model {Quote(adapterDir)} --prompt \"$(cat {Quote(promptFile)})\" --max-tokens {settings.MaxAnswerTokens}");
        output.WriteLine($"Done in {Seconds(total)}.");
        return (baseScore, tunedScore);
    }

    // Runs the trainer to `steps`; every `evalEvery` steps (0: never) prints what `evaluate` says.
    internal static void Train(SftTrainer trainer, int steps, TextWriter output, int evalEvery = 0, Func<string>? evaluate = null)
    {
        var progress = new ProgressLine(output, steps);
        while (trainer.Step < steps)
        {
            try { progress.Report(trainer.TrainStep()); }
            catch (TrainingDivergedException e) { throw new CliException($"demo: {e.Message} (the demo's settings are fixed; please report this with the seed)"); }
            if (evalEvery > 0 && evaluate is not null && trainer.Step % evalEvery == 0 && trainer.Step < steps)
            {
                progress.Done();
                output.WriteLine($"   step {trainer.Step}: {evaluate()}");
            }
        }
        progress.Done();
    }

    // "32% (arithmetic 0%, reverse 0%, sort 60%, count 100%, format 0%)"
    private static string Families(DemoScore score) =>
        $"{Percent(score.Overall)} ({string.Join(", ", DemoDataset.Families.Select(f => $"{f} {Percent(score.Family(f))}"))})";

    private static void WriteTable(TextWriter output, DemoScore before, DemoScore after)
    {
        output.WriteLine($"   {"family",-12}{"base model",16}{"fine-tuned",16}");
        foreach (var family in DemoDataset.Families)
            output.WriteLine($"   {family,-12}{Cell(before.Family(family)),16}{Cell(after.Family(family)),16}");
        output.WriteLine($"   {"overall",-12}{Cell(before.Overall),16}{Cell(after.Overall),16}");

        static string Cell((int Correct, int Total) x) => string.Create(CultureInfo.InvariantCulture, $"{x.Correct}/{x.Total} {100 * DemoScore.Accuracy(x),5:F1}%");
    }

    private static string Percent((int Correct, int Total) x) => string.Create(CultureInfo.InvariantCulture, $"{100 * DemoScore.Accuracy(x):F0}%");

    private static string Ask(DemoTask t) => t.Input.Length == 0 ? t.Instruction : $"{t.Instruction} [{t.Input}]";

    internal static string Seconds(Stopwatch clock) => string.Create(CultureInfo.InvariantCulture, $"{clock.Elapsed.TotalSeconds:F0} s");

    private static string Quote(string path) => path.Contains(' ') ? $"'{path}'" : path;

    // The data as files: Alpaca JSON (so `tinyllama sft --data` can rerun the fine-tuning) and the pre-training text.
    private static void WriteData(string dir, DemoDataset data, IReadOnlyList<string> documents)
    {
        WriteAlpaca(Path.Combine(dir, "train.json"), data.Train);
        WriteAlpaca(Path.Combine(dir, "test.json"), data.Test);
        AtomicFile.WriteAllText(Path.Combine(dir, "pretrain.txt"), string.Join("\n\n", documents) + "\n");
        // The held-out items as the base model's plain sentences: held-out text for `perplexity` (no training text holds them).
        AtomicFile.WriteAllText(Path.Combine(dir, "heldout.txt"), string.Join("\n", data.Test.Select(t => t.Fact)) + "\n");

        static void WriteAlpaca(string path, IReadOnlyList<DemoTask> tasks)
        {
            using var stream = new MemoryStream();
            using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            {
                w.WriteStartArray();
                foreach (var t in tasks)
                {
                    w.WriteStartObject();
                    w.WriteString("instruction", t.Instruction);
                    w.WriteString("input", t.Input);
                    w.WriteString("output", t.Output);
                    w.WriteString("family", t.Family);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            }
            AtomicFile.WriteAllText(path, Encoding.UTF8.GetString(stream.ToArray()));
        }
    }
}
