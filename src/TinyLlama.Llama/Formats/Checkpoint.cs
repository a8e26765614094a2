// The one entry point from a path on disk to (LlamaConfig, weights): a Hugging Face model directory
// (config.json plus model.safetensors, or model.safetensors.index.json and its shards), a single
// .safetensors file with config.json beside it, a llama2.c .bin, or a llama.cpp .gguf (GgufModel.cs).
//
// Sharded checkpoints follow transformers' convention (modeling_utils.py, SAFE_WEIGHTS_INDEX_NAME):
// model.safetensors.index.json = {"metadata": {...}, "weight_map": {tensor name: shard file name}},
// the shards sitting beside the index.
//
// Every loader returns the weights under the names in LlamaWeightNames, in their stored dtype
// (safetensors and GGUF tensors view the memory-mapped files; llama2.c tensors are f32 arrays), and Load
// checks them against the config, so the model can index the dictionary without further checks. The 2-D
// weights may be block-quantized (GGUF's Q4_0, Q8_0, Q4_K, Q6_K): byte tensors [N, rowBytes] whose
// logical shape [N, rowBytes / blockBytes * blockSize] is what is checked.
using System.Text.Json;
using TinyLlama.Model;
using TinyLlama.Tensors;

namespace TinyLlama.Formats;

/// <summary>A model's configuration and its weights by Hugging Face name.</summary>
/// <param name="Config">The hyper-parameters.</param>
/// <param name="Weights">Tensors by name (see <see cref="LlamaWeightNames"/>); shapes match <paramref name="Config"/>.</param>
public sealed record ModelCheckpoint(LlamaConfig Config, IReadOnlyDictionary<string, Tensor> Weights);

/// <summary>Loads LLaMA checkpoints from disk, whatever their format.</summary>
public static class Checkpoint
{
    /// <summary>File name of a single-file safetensors checkpoint in an HF directory.</summary>
    public const string SafetensorsName = "model.safetensors";

    /// <summary>File name of the shard index of a sharded HF checkpoint.</summary>
    public const string IndexName = "model.safetensors.index.json";

    /// <summary>File name of the HF configuration.</summary>
    public const string ConfigName = "config.json";

    /// <summary>
    /// Loads <paramref name="path"/>: an HF directory, a .safetensors file (config.json beside it), a
    /// llama2.c .bin, or a GGUF file (config and weights inside). The weights are checked against the config:
    /// every expected tensor present with the expected shape and a floating-point dtype, or a block dtype
    /// for 2-D weights (tensors the model does not use are kept, unchecked).
    /// </summary>
    public static ModelCheckpoint Load(string path)
    {
        ModelCheckpoint checkpoint;
        if (Directory.Exists(path))
        {
            var config = LlamaConfig.FromJson(RequireFile(Path.Combine(path, ConfigName), $"{path}: no {ConfigName} in the model directory"));
            checkpoint = new ModelCheckpoint(config, LoadDirectory(path));
        }
        else if (File.Exists(path) && path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase))
        {
            checkpoint = GgufModel.Load(path);
        }
        else if (File.Exists(path) && path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase))
        {
            checkpoint = Llama2CFile.Load(path);
        }
        else if (File.Exists(path) && path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
            var config = LlamaConfig.FromJson(RequireFile(Path.Combine(dir, ConfigName), $"{path}: no {ConfigName} beside the safetensors file"));
            checkpoint = new ModelCheckpoint(config, SafetensorsFile.Open(path).GetAll());
        }
        else if (File.Exists(path) && path.EndsWith(IndexName, StringComparison.OrdinalIgnoreCase))
        {
            string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
            var config = LlamaConfig.FromJson(RequireFile(Path.Combine(dir, ConfigName), $"{path}: no {ConfigName} beside the index"));
            checkpoint = new ModelCheckpoint(config, LoadSharded(path));
        }
        else if (File.Exists(path))
        {
            throw new InvalidDataException($"{path}: not a checkpoint this engine reads (expected a model directory, a .safetensors file, a llama2.c .bin or a .gguf)");
        }
        else
        {
            throw new FileNotFoundException($"{path}: no such file or directory", path);
        }
        CheckWeights(checkpoint.Config, checkpoint.Weights, path);
        return checkpoint;
    }

    /// <summary>
    /// The safetensors weights of an HF directory: model.safetensors if present, else the shards listed in
    /// model.safetensors.index.json. Tensors view the memory-mapped files.
    /// </summary>
    public static IReadOnlyDictionary<string, Tensor> LoadDirectory(string directory)
    {
        string single = Path.Combine(directory, SafetensorsName);
        if (File.Exists(single)) return SafetensorsFile.Open(single).GetAll();
        string index = Path.Combine(directory, IndexName);
        if (File.Exists(index)) return LoadSharded(index);
        throw new InvalidDataException($"{directory}: neither {SafetensorsName} nor {IndexName} is in the directory");
    }

    /// <summary>Loads the tensors a model.safetensors.index.json lists from its shards (beside the index).</summary>
    public static IReadOnlyDictionary<string, Tensor> LoadSharded(string indexPath)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(indexPath))!;
        var weightMap = ReadWeightMap(indexPath);
        var shards = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        var weights = new Dictionary<string, Tensor>(weightMap.Count, StringComparer.Ordinal);
        foreach (var (name, shardName) in weightMap)
        {
            if (!shards.TryGetValue(shardName, out var shard))
            {
                string shardPath = Path.Combine(dir, shardName);
                if (!File.Exists(shardPath))
                    throw new InvalidDataException($"{indexPath}: shard file {MessageText.Quote(shardName)} (holding {MessageText.Quote(name)}) is missing from {dir}");
                shards[shardName] = shard = SafetensorsFile.Open(shardPath);
            }
            if (!shard.Contains(name))
                throw new InvalidDataException($"{indexPath}: tensor {MessageText.Quote(name)} is mapped to shard {MessageText.Quote(shardName)}, which does not contain it");
            weights[name] = shard.Get(name);
        }
        return weights;
    }

    /// <summary>
    /// Checks that <paramref name="weights"/> hold every tensor <paramref name="config"/> needs with the right
    /// shape and a floating-point dtype (or, for 2-D weights, a block dtype whose logical shape is right);
    /// a one-line <see cref="InvalidDataException"/> naming
    /// <paramref name="source"/> and the tensor otherwise.
    /// </summary>
    public static void CheckWeights(LlamaConfig config, IReadOnlyDictionary<string, Tensor> weights, string source)
    {
        CheckLayerCount(config, weights, source);
        foreach (var (name, shape) in LlamaWeightNames.Expected(config))
        {
            if (!weights.TryGetValue(name, out var t))
                throw new InvalidDataException($"{source}: tensor '{name}' is missing (the config needs shape {Shapes.Format(shape)} from {FieldsOf(name)})");
            if (t.DType.IsQuantized())
            {
                var block = GgmlTypes.FromDType(t.DType);
                if (shape.Length != 2)
                    throw new InvalidDataException($"{source}: tensor '{name}' has dtype {t.DType.Name()}; a {shape.Length}-D weight must be floating-point");
                if (t.Rank != 2 || t.Size(1) % block.BlockBytes != 0)
                    throw new InvalidDataException($"{source}: tensor '{name}' is {t.DType.Name()} of shape {Shapes.Format(t.Shape)}, not [rows, a multiple of the {block.BlockBytes}-byte block]");
                int[] logical = [t.Size(0), t.Size(1) / block.BlockBytes * block.BlockSize];
                if (!logical.AsSpan().SequenceEqual(shape))
                    throw new InvalidDataException($"{source}: tensor '{name}' has shape {Shapes.Format(logical)} ({t.DType.Name()} bytes {Shapes.Format(t.Shape)}), but the config needs {Shapes.Format(shape)} from {FieldsOf(name)}");
                continue;
            }
            if (!t.Shape.AsSpan().SequenceEqual(shape))
                throw new InvalidDataException($"{source}: tensor '{name}' has shape {Shapes.Format(t.Shape)}, but the config needs {Shapes.Format(shape)} from {FieldsOf(name)}");
            if (!t.DType.IsFloat())
                throw new InvalidDataException($"{source}: tensor '{name}' has dtype {t.DType.Name()}; weights must be floating-point");
        }
    }

    /// <summary>
    /// The config's layer count against the layers the weights hold, before anything is sized by it: a
    /// num_hidden_layers larger than the file can back (a corrupt or hostile config.json) would otherwise
    /// build billions of expected names, and a smaller one would silently drop layers.
    /// </summary>
    private static void CheckLayerCount(LlamaConfig config, IReadOnlyDictionary<string, Tensor> weights, string source)
    {
        const string prefix = "model.layers.";
        var present = new HashSet<int>();
        int highest = -1;
        foreach (string name in weights.Keys)
        {
            if (!name.StartsWith(prefix, StringComparison.Ordinal)) continue;
            int dot = name.IndexOf('.', prefix.Length);
            if (dot < 0 || !int.TryParse(name.AsSpan(prefix.Length, dot - prefix.Length), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int layer)) continue;
            present.Add(layer);
            highest = Math.Max(highest, layer);
        }
        if (config.NumHiddenLayers > present.Count)
        {
            int missing = 0;
            while (present.Contains(missing)) missing++;
            throw new InvalidDataException($"{source}: num_hidden_layers is {config.NumHiddenLayers} but the weights hold {present.Count} layer{(present.Count == 1 ? "" : "s")} (no tensor of layer {missing})");
        }
        if (highest >= config.NumHiddenLayers)
            throw new InvalidDataException($"{source}: the weights hold layer {highest} but num_hidden_layers is {config.NumHiddenLayers} (layers 0 to {config.NumHiddenLayers - 1})");
    }

    /// <summary>The config fields that set a weight's shape, for error messages.</summary>
    private static string FieldsOf(string name) =>
        name is LlamaWeightNames.Embedding or LlamaWeightNames.LmHead ? "vocab_size x hidden_size"
        : name.EndsWith("q_proj.weight", StringComparison.Ordinal) || name.EndsWith("o_proj.weight", StringComparison.Ordinal) ? "num_attention_heads x head_dim and hidden_size"
        : name.EndsWith("k_proj.weight", StringComparison.Ordinal) || name.EndsWith("v_proj.weight", StringComparison.Ordinal) ? "num_key_value_heads x head_dim and hidden_size"
        : name.Contains(".mlp.", StringComparison.Ordinal) ? "intermediate_size and hidden_size"
        : "hidden_size";

    private static string RequireFile(string path, string message) =>
        File.Exists(path) ? path : throw new InvalidDataException(message);

    private static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        byte[] bytes = JsonText.ReadBytes(indexPath);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(bytes);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{indexPath}: not valid JSON ({e.Message.ReplaceLineEndings(" ")})");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{indexPath}: no 'weight_map' object");
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{indexPath}: weight_map entry {MessageText.Quote(p.Name)} must be a shard file name, found {p.Value.ValueKind}");
                string shard = p.Value.GetString()!;
                // Shards live beside the index; a name with a directory part could reach anywhere on disk.
                if (shard.Length == 0 || shard.IndexOfAny(['/', '\\']) >= 0 || shard != Path.GetFileName(shard) || shard is "." or "..")
                    throw new InvalidDataException($"{indexPath}: weight_map entry {MessageText.Quote(p.Name)} names shard {MessageText.Quote(shard)}, which is not a plain file name");
                if (!result.TryAdd(p.Name, shard))
                    throw new InvalidDataException($"{indexPath}: weight_map lists tensor {MessageText.Quote(p.Name)} twice");
            }
            return result;
        }
    }
}
