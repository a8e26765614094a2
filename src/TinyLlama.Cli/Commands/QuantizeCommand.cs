// `tinyllama quantize`: any model this program loads (HF directory, llama2.c .bin, GGUF, or a PEFT adapter
// directory, merged into its base) written as one GGUF file that llama.cpp runs, in f32, f16, bf16, q8_0 or
// q4_0, by round-to-nearest (llama.cpp's reference quantizers, byte for byte) or GPTQ on calibration text.
//
// Calibration (GPTQ): --calib FILE is UTF-8 text (strictly: a bad byte is an error naming its offset),
// tokenized with the model's tokenizer and cut into sequences of --calib-length tokens, each starting with
// BOS; a FILE ending in .ids holds token ids instead, one sequence per line (comma- or space-separated), for
// models that come without a tokenizer. The first --calib-samples sequences are used. GPTQ searches each
// block's scale (--scale-search mse, the default; Gptq.cs explains the search) or takes the format's own
// (none); round to nearest never searches.
//
// Which weight goes in which format is ModelQuantizer's one rule, for block and float types alike: the
// embedding and the LM head in --keep's format, the norms in f32, the decoder linears in --type's.
//
// Rows whose length is not a multiple of the block size (32) cannot be q4_0 or q8_0; they are kept in f16,
// as llama-quantize's fallback does for formats that cannot hold them, and the summary line says how many.
// A source that is itself block-quantized (a q4_0 GGUF, or an adapter trained over one) is expanded to f32
// first: the quantizers and LoRA's merge read float weights.
using System.CommandLine;
using System.Globalization;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Lora;

namespace TinyLlama.Cli.Commands;

internal static class QuantizeCommand
{
    private static readonly string[] Types = ["f32", "f16", "bf16", "q8_0", "q4_0"];

    public static Command Create()
    {
        var model = ModelCommands.ModelOption();
        model.Description = "A model directory, llama2.c .bin, .gguf file or PEFT adapter directory (merged into its base)";
        var tokenizer = ModelCommands.TokenizerOption();
        var outFile = new Option<string>("--out") { Description = "The GGUF file to write", Required = true };
        var type = new Option<string>("--type") { Description = "f32, f16, bf16, q8_0 or q4_0", Required = true };
        var method = new Option<string>("--method") { Description = "rtn (round to nearest, llama.cpp's quantizers) or gptq (needs --calib)", DefaultValueFactory = _ => "rtn" };
        var calib = new Option<string?>("--calib") { Description = "Calibration text for GPTQ (UTF-8), or token ids (a .ids file: one sequence per line)" };
        var samples = new Option<int>("--calib-samples") { Description = "Calibration sequences to use", DefaultValueFactory = _ => 128 }.Range(1, OptionRange.MaxCount);
        var length = new Option<int>("--calib-length") { Description = "Tokens per calibration sequence (default: 256, at most the model's context)" }.Range(0, OptionRange.MaxCount);
        var actOrder = new Option<bool>("--act-order") { Description = "GPTQ: quantize columns by decreasing Hessian diagonal" };
        var scaleSearch = new Option<string?>("--scale-search") { Description = "GPTQ: each block's scale by the format's rule (none) or searched for the least weighted rounding error (mse, the default)" };
        var keep = new Option<string?>("--keep") { Description = "Format of the embedding and the LM head: f32, f16 or q8_0 (default: q8_0 for q4_0/q8_0, else --type)" };
        var checkTensors = ModelCommands.CheckTensorsOption();
        var cmd = new Command("quantize", "Write a model as a GGUF file in f32, f16, bf16, q8_0 or q4_0 (round to nearest or GPTQ).")
            { model, tokenizer, outFile, type, method, calib, samples, length, actOrder, scaleSearch, keep, checkTensors };
        cmd.SetAction(parse =>
        {
            // ---- flags first, before any file is read ----
            string typeName = parse.GetValue(type)!.ToLowerInvariant();
            if (!Types.Contains(typeName)) throw new CliException($"--type: expected one of {string.Join(", ", Types)}, got '{parse.GetValue(type)}'", isUsage: true);
            bool blocks = typeName is "q4_0" or "q8_0";
            string methodName = parse.GetValue(method)!.ToLowerInvariant();
            if (methodName is not ("rtn" or "gptq")) throw new CliException($"--method: expected rtn or gptq, got '{parse.GetValue(method)}'", isUsage: true);
            bool gptq = methodName == "gptq";
            if (gptq && !blocks) throw new CliException($"--method gptq needs --type q4_0 or q8_0, got {typeName}", isUsage: true);
            string? calibPath = parse.GetValue(calib);
            if (gptq && calibPath is null) throw new CliException("--method gptq needs --calib FILE", isUsage: true);
            if (!gptq && calibPath is not null) throw new CliException("--calib is only used by --method gptq", isUsage: true);
            if (parse.GetValue(actOrder) && !gptq) throw new CliException("--act-order is only used by --method gptq", isUsage: true);
            string? searchName = parse.GetValue(scaleSearch)?.ToLowerInvariant();
            if (searchName is not (null or "none" or "mse")) throw new CliException($"--scale-search: expected none or mse, got '{parse.GetValue(scaleSearch)}'", isUsage: true);
            if (searchName is not null && !gptq) throw new CliException("--scale-search is only used by --method gptq", isUsage: true);
            var search = searchName == "none" ? GptqScaleSearch.None : GptqScaleSearch.Mse;
            int nSamples = parse.GetValue(samples);
            int calibLength = parse.GetValue(length);
            if (calibLength == 1) throw new CliException("--calib-length must be 0 (the default) or >= 2, got 1", isUsage: true);
            string keepName = (parse.GetValue(keep) ?? (blocks ? "q8_0" : typeName)).ToLowerInvariant();
            if (keepName is not ("f32" or "f16" or "bf16" or "q8_0") || (keepName == "bf16" && blocks))
                throw new CliException($"--keep: expected f32, f16 or q8_0, got '{parse.GetValue(keep)}'", isUsage: true);
            string outPath = parse.GetValue(outFile)!;
            if (!outPath.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)) throw new CliException($"--out: {outPath} must end in .gguf", isUsage: true);
            string outDir = Path.GetDirectoryName(Path.GetFullPath(outPath))!;
            if (!Directory.Exists(outDir)) throw new CliException($"--out: the directory {outDir} does not exist");

            // ---- the model, merged, in f32 ----
            string path = parse.GetValue(model)!;
            var files = new ModelFiles { CheckTensors = parse.GetValue(checkTensors) };
            var lm = ModelCommands.LoadModel(path, files, dequantize: true);
            int merged = Lora.AdaptedLayers(lm).Count > 0 ? Lora.Merge(lm) : 0;
            var tok = TryLoadTokenizer(path, parse.GetValue(tokenizer), files);
            var error = parse.InvocationConfiguration.Error;
            var output = parse.InvocationConfiguration.Output;

            Dictionary<string, Tensor> weights;
            if (blocks)
            {
                var options = new ModelQuantizerOptions
                {
                    Type = typeName == "q4_0" ? QuantType.Q4_0 : QuantType.Q8_0,
                    Method = gptq ? QuantMethod.Gptq : QuantMethod.Rtn,
                    ActOrder = parse.GetValue(actOrder),
                    ScaleSearch = search,
                    Embedding = WeightFormatOf(keepName),
                    Head = WeightFormatOf(keepName),
                };
                var sequences = gptq ? Calibration(calibPath!, tok, lm.Config, nSamples, calibLength) : null;
                if (sequences is not null)
                    error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"calibration: {sequences.Count} sequences, {sequences.Sum(s => s.Length):N0} tokens from {calibPath}"));
                weights = ModelQuantizer.Quantize(lm, sequences, options, (done, all) => error.WriteLine($"quantized {done}/{all}"));
            }
            else weights = ModelQuantizer.Convert(lm, WeightFormatOf(typeName), WeightFormatOf(keepName), WeightFormatOf(keepName));
            GgufModel.Save(outPath, lm.Config, weights, tok);

            long size = new FileInfo(outPath).Length;
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"wrote {outPath}: {typeName}{(blocks ? $" ({methodName}{(parse.GetValue(actOrder) ? ", act-order" : "")}{(gptq && search == GptqScaleSearch.None ? ", no scale search" : "")})" : "")}, {weights.Count} tensors ({TensorFormats(weights.Values)}), {size / (1024.0 * 1024.0):F2} MiB{(merged > 0 ? $", {merged} LoRA adapters merged" : "")}{(tok is null ? ", no tokenizer" : "")}"));
            return ExitCodes.Success;
        });
        return cmd;
    }

    /// <summary>How many tensors of each dtype, e.g. "5 float32, 12 q4_0, 2 q8_0".</summary>
    internal static string TensorFormats(IEnumerable<Tensor> tensors) => string.Join(", ",
        tensors.GroupBy(t => t.DType.Name()).OrderBy(g => g.Key, StringComparer.Ordinal).Select(g => $"{g.Count()} {g.Key}"));

    private static WeightFormat WeightFormatOf(string name) => name switch
    {
        "f32" => WeightFormat.F32,
        "f16" => WeightFormat.F16,
        "bf16" => WeightFormat.BF16,
        _ => WeightFormat.Q8_0,
    };

    private static LlamaTokenizer? TryLoadTokenizer(string modelPath, string? tokenizerPath, ModelFiles files)
    {
        if (tokenizerPath is not null) return ModelCommands.LoadTokenizer(modelPath, tokenizerPath, files);
        string basePath = ModelCommands.BaseModelPath(modelPath, files);
        return ModelCommands.HasTokenizer(basePath, null, files) ? ModelCommands.LoadTokenizer(basePath, null, files) : null;
    }

    /// <summary>Calibration sequences from text (cut into BOS + length - 1 tokens) or from a .ids file.</summary>
    internal static List<int[]> Calibration(string path, LlamaTokenizer? tok, LlamaConfig config, int samples, int length)
    {
        TextFileOption.RequireFile(path, "--calib");
        int max = Math.Min(length > 0 ? length : 256, config.MaxPositionEmbeddings);
        var sequences = new List<int[]>();
        if (path.EndsWith(".ids", StringComparison.OrdinalIgnoreCase))
        {
            foreach (var seq in ReadIdsFile(path, config.VocabSize, "--calib"))
            {
                sequences.Add(seq.Length > max ? seq[..max] : seq);
                if (sequences.Count == samples) break;
            }
        }
        else
        {
            if (tok is null) throw new CliException($"--calib: {path} is text, but the model has no tokenizer; give --tokenizer or a .ids file");
            string text = TextFileOption.Read(path, "--calib");
            int bos = tok.RequireBosId();
            var ids = tok.Encode(text);
            for (int at = 0; at + max - 1 <= ids.Length && sequences.Count < samples; at += max - 1)
                sequences.Add([bos, .. ids.AsSpan(at, max - 1)]);
            if (sequences.Count == 0 && ids.Length > 0) sequences.Add([bos, .. ids]);
        }
        if (sequences.Count == 0) throw new CliException($"--calib: {path} holds no tokens");
        return sequences;
    }

    /// <summary>
    /// Token-id sequences, one per non-empty line (comma- or space-separated), each id below <paramref name="vocab"/>
    /// and each sequence <paramref name="minLength"/> to <paramref name="maxLength"/> ids long.
    /// </summary>
    internal static List<int[]> ReadIdsFile(string path, int vocab, string flag, int minLength = 1, int maxLength = int.MaxValue)
    {
        var result = new List<int[]>();
        int lineNumber = 0;
        foreach (var line in TextFileOption.Read(path, flag).Split('\n'))
        {
            lineNumber++;
            var parts = line.Split([',', ' ', '\t', '\r'], StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 0) continue;
            var ids = new int[parts.Length];
            for (int i = 0; i < parts.Length; i++)
                if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out ids[i]) || ids[i] >= vocab)
                    throw new CliException($"{flag}: {path} line {lineNumber}: '{parts[i]}' is not a token id below the vocabulary size {vocab}");
            if (ids.Length < minLength || ids.Length > maxLength)
                throw new CliException($"{flag}: {path} line {lineNumber}: {ids.Length} ids, expected {minLength} to {maxLength}");
            result.Add(ids);
        }
        return result;
    }
}
