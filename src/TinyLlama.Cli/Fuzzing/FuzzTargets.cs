// The fuzz harness's targets: for each format the program reads, the seed cases (a directory of files, one
// of which is mutated) and the real loader the CLI uses on them:
//   safetensors, config, index, gguf, llama2c, adapter  ModelCommands.LoadModel (the CLI's model loader:
//                     checkpoint formats, config against weights, PEFT adapter chains), then one forward
//                     pass of two tokens whose logits must be finite or raise the non-finite-logits error;
//                     gguf also reads its tokenizer and encodes with it.
//   tokenizer-model, tokenizer-json   LlamaTokenizer.Load, then encode and decode a few texts.
//   checkpoint        SftTrainer.LoadCheckpoint into a fresh trainer of the seed's setup.
//   alpaca, sharegpt  SftDataset.Load, JSON and JSON Lines, with the format named and with "auto".
// Reference files (../shared/reference: the stories260K config.json, the SFT sample) are added as seeds
// when a reference directory is given. Where a mutated input would be a rewrite of a megabyte (stories260K's
// model.safetensors and .bin) a tiny in-process seed of the same structure stands in for it (tied f16
// weights; a llama2.c file with a shared classifier), five times faster per input; the 500 KB Llama 2
// tokenizer.model is left out likewise (each input would parse 32,000 pieces).
using TinyLlama.Autograd;
using TinyLlama.Cli.Commands;
using TinyLlama.Formats;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;
using TinyLlama.Training.Lora;

namespace TinyLlama.Cli.Fuzzing;

/// <summary>What a loader did with an input that did not throw.</summary>
internal enum LoadResult { Ok, NonFiniteLogits }

/// <summary>
/// One seed case: the files of a directory (paths relative to it), the one that is mutated, how, and the
/// loader run on the directory.
/// </summary>
internal sealed record FuzzCase(string Label, IReadOnlyDictionary<string, byte[]> Files, string Subject, IMutator Mutator, Func<string, LoadResult> Load);

/// <summary>A format and its seed cases.</summary>
internal sealed record FuzzTarget(string Name, IReadOnlyList<FuzzCase> Cases);

internal static class FuzzTargets
{
    /// <summary>Every format name, in table order.</summary>
    public static IReadOnlyList<string> Names { get; } =
        ["safetensors", "config", "index", "gguf", "llama2c", "tokenizer-model", "tokenizer-json", "adapter", "checkpoint", "alpaca", "sharegpt"];

    /// <summary>
    /// The targets named <paramref name="names"/>; <paramref name="work"/> is where their directories will live
    /// (adapter seeds name their base model by absolute path); <paramref name="reference"/> adds reference seeds.
    /// </summary>
    public static List<FuzzTarget> Create(IEnumerable<string> names, string work, string? reference)
    {
        string scratch = Path.Combine(work, "seeds");
        Directory.CreateDirectory(scratch);
        var targets = names.Select(n => new FuzzTarget(n, Cases(n, work, scratch, reference))).ToList();
        Directory.Delete(scratch, recursive: true);
        return targets;
    }

    private static List<FuzzCase> Cases(string name, string work, string scratch, string? reference)
    {
        var cases = new List<FuzzCase>();
        var config = FuzzSeeds.ConfigJson();
        string? Ref(string relative) => reference is not null && File.Exists(Path.Combine(reference, relative)) ? Path.Combine(reference, relative) : null;
        switch (name)
        {
            case "safetensors" or "config":
                {
                    // An HF directory (config.json, model.safetensors) with one of the two mutated: the tiny model's,
                    // the tiny model tied and in f16, and stories260K's config (the weights, 1 MB, are only
                    // rewritten when the config is the subject, so only then) when the reference data is here.
                    string subject = name == "config" ? Checkpoint.ConfigName : Checkpoint.SafetensorsName;
                    var (tiedConfig, tiedWeights) = FuzzSeeds.TiedHalf(scratch);
                    var dirs = new List<(string Label, byte[] Config, byte[] Weights)>
                    {
                        ("tiny", config, FuzzSeeds.SafetensorsBytes(FuzzSeeds.Weights(), scratch)),
                        ("tiny tied f16", tiedConfig, tiedWeights),
                    };
                    if (name == "config" && Ref("stories260K/hf/config.json") is { } refConfig && Ref("stories260K/hf/model.safetensors") is { } refWeights)
                        dirs.Add(("stories260K", File.ReadAllBytes(refConfig), File.ReadAllBytes(refWeights)));
                    foreach (var (label, c, w) in dirs)
                    {
                        IMutator mutator = name == "config" ? new JsonFileMutator(c) : new SafetensorsMutator(w);
                        cases.Add(new(label, Files((Checkpoint.ConfigName, c), (Checkpoint.SafetensorsName, w)), subject, mutator, ModelDir));
                    }
                    break;
                }
            case "index":
                {
                    var files = FuzzSeeds.Sharded(scratch);
                    cases.Add(new("index", files, Checkpoint.IndexName, new JsonFileMutator(files[Checkpoint.IndexName]), ModelDir));
                    string shard = files.Keys.First(k => k.StartsWith("model-00001", StringComparison.Ordinal));
                    cases.Add(new("shard", files, shard, new SafetensorsMutator(files[shard]), ModelDir));
                    break;
                }
            case "gguf":
                {
                    var gguf = FuzzSeeds.Gguf(scratch);
                    cases.Add(new("tiny", Files(("model.gguf", gguf)), "model.gguf", BinaryMutator.Gguf(gguf), dir => LoadGguf(Path.Combine(dir, "model.gguf"))));
                    break;
                }
            case "llama2c":
                {
                    // A separate classifier (vocab_size < 0) and a shared one (stories260K.bin's layout).
                    foreach (bool shared in (bool[])[false, true])
                    {
                        var bin = FuzzSeeds.Llama2C(shared);
                        cases.Add(new(shared ? "tiny shared" : "tiny", Files(("model.bin", bin)), "model.bin", BinaryMutator.Llama2C(bin), dir => Model(Path.Combine(dir, "model.bin"))));
                    }
                    break;
                }
            case "tokenizer-model":
                {
                    var spm = FuzzSeeds.SentencePieceModel();
                    cases.Add(new("bpe", Files(("tokenizer.model", spm)), "tokenizer.model", BinaryMutator.Protobuf(spm), dir => Tokenizer(Path.Combine(dir, "tokenizer.model"))));
                    break;
                }
            case "tokenizer-json":
                {
                    var json = FuzzSeeds.TokenizerJson();
                    cases.Add(new("bpe", Files(("tokenizer.json", json)), "tokenizer.json", new JsonFileMutator(json), dir => Tokenizer(Path.Combine(dir, "tokenizer.json"))));
                    break;
                }
            case "adapter":
                {
                    // The base model is written once beside the adapter, under the target's own directory.
                    string baseDir = Path.Combine(work, name, "base");
                    Directory.CreateDirectory(baseDir);
                    File.WriteAllBytes(Path.Combine(baseDir, Checkpoint.ConfigName), config);
                    File.WriteAllBytes(Path.Combine(baseDir, Checkpoint.SafetensorsName), FuzzSeeds.SafetensorsBytes(FuzzSeeds.Weights(), scratch));
                    var adapter = FuzzSeeds.Adapter(baseDir, scratch);
                    foreach (var (file, bytes) in adapter)
                    {
                        IMutator mutator = file == PeftAdapter.ConfigFileName ? new JsonFileMutator(bytes) : new SafetensorsMutator(bytes);
                        cases.Add(new(file, adapter, file, mutator, Model));
                    }
                    break;
                }
            case "checkpoint":
                {
                    // One trainer per case, built once: LoadCheckpoint checks everything before it changes anything
                    // (SftTrainer.Checkpoint.cs), so an input's outcome does not depend on the inputs before it,
                    // and building a trainer per input cost a third of the time.
                    var files = FuzzSeeds.TrainingCheckpoint(scratch);
                    foreach (var (file, bytes) in files)
                    {
                        IMutator mutator = file.EndsWith(".json", StringComparison.Ordinal) ? new JsonFileMutator(bytes) : new SafetensorsMutator(bytes);
                        var trainer = new Lazy<TinyLlama.Training.Trainer.SftTrainer>(FuzzSeeds.Trainer);
                        cases.Add(new(file, files, file, mutator, dir => { trainer.Value.LoadCheckpoint(dir); return LoadResult.Ok; }));
                    }
                    break;
                }
            case "alpaca" or "sharegpt":
                {
                    foreach (bool lines in (bool[])[false, true])
                    {
                        var bytes = name == "alpaca" ? FuzzSeeds.Alpaca(lines) : FuzzSeeds.ShareGpt(lines);
                        string file = lines ? "data.jsonl" : "data.json";
                        IMutator mutator = lines ? new JsonLinesMutator(bytes) : new JsonFileMutator(bytes);
                        foreach (var format in (string[])[name, "auto"])
                            cases.Add(new($"{file} --format {format}", Files((file, bytes)), file, mutator, dir => Data(Path.Combine(dir, file), format)));
                    }
                    if (name == "alpaca" && Ref("tiny-random-llama/sft_sample.json") is { } path)
                    {
                        var bytes = File.ReadAllBytes(path);
                        cases.Add(new("sft_sample.json", Files(("data.json", bytes)), "data.json", new JsonFileMutator(bytes), dir => Data(Path.Combine(dir, "data.json"), "alpaca")));
                    }
                    break;
                }
            default:
                throw new ArgumentException($"--format: unknown format '{name}'; expected one of {string.Join(", ", Names)} or all");
        }
        return cases;
    }

    private static Dictionary<string, byte[]> Files(params (string Name, byte[] Bytes)[] files) => files.ToDictionary(f => f.Name, f => f.Bytes);

    private static LoadResult ModelDir(string dir) => Model(dir);

    // The CLI's loader, then one forward pass of two tokens.
    private static LoadResult Model(string path) => Forward(ModelCommands.LoadModel(path, new ModelFiles(), Device.Cpu));

    private static LoadResult LoadGguf(string path)
    {
        var files = new ModelFiles();
        var result = Forward(ModelCommands.LoadModel(path, files, Device.Cpu));
        Exercise(GgufModel.LoadTokenizer(files.Gguf(path)));
        return result;
    }

    /// <summary>Runs two tokens (one when the context is 1) through <paramref name="model"/>; the CLI's non-finite check decides the result.</summary>
    public static LoadResult Forward(LlamaForCausalLM model)
    {
        int v = model.Config.VocabSize;
        int[] ids = model.Config.MaxPositionEmbeddings >= 2 ? [Math.Min(1, v - 1), v - 1] : [v - 1]; // a context of 1 takes one token
        using var _ = GradMode.NoGrad();
        var logits = model.Forward(Tensor.FromArray(ids, [1, ids.Length])).ToArray<float>();
        try { Sampler.CheckFinite(logits); }
        catch (InvalidDataException) { return LoadResult.NonFiniteLogits; }
        return LoadResult.Ok;
    }

    private static LoadResult Tokenizer(string path)
    {
        Exercise(LlamaTokenizer.Load(path));
        return LoadResult.Ok;
    }

    // Encodes and decodes texts that touch merges, byte fallback and whitespace, and decodes every id.
    private static void Exercise(LlamaTokenizer tokenizer)
    {
        foreach (var text in (string[])["", "lo a ab", "Hello wörld, 🦙\n\t  x", "<s></s><unk>"])
            tokenizer.Decode(tokenizer.Encode(text, addBos: true, addEos: true));
        tokenizer.Decode(Enumerable.Range(0, Math.Min(tokenizer.VocabSize, 512)));
    }

    private static readonly Lazy<LlamaTokenizer> DataTokenizer = new(() => FuzzSeeds.ByteTokenizer());

    private static LoadResult Data(string path, string format)
    {
        SftDataset.Load(path, format, DataTokenizer.Value, maxLength: 48);
        return LoadResult.Ok;
    }
}
