// The fuzz harness's seed files: tiny valid files of every format the program reads, made in-process
// with the project's own writers (Safetensors.Save, GgufModel.Save, PeftAdapter.Save,
// SftTrainer.SaveCheckpoint) where it has them, and byte by byte where it has none: a llama2.c v0 .bin
// (layout in Llama2CFile.cs), a SentencePiece tokenizer.model (ModelProto fields as listed in
// SentencePieceModel.cs) and a Hugging Face tokenizer.json (the shape HuggingFaceTokenizerJson.cs reads).
// Small on purpose: a mutated input costs one file write, one parse and, when it loads, one forward pass
// of two tokens through a 2-layer model of width 16.
using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;
using TinyLlama.Training.Lora;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Cli.Fuzzing;

internal static class FuzzSeeds
{
    /// <summary>The model every seed describes: 2 layers, width 16, 2 heads sharing 1 KV head, vocabulary 32.</summary>
    public static LlamaConfig Config { get; } = new()
    {
        VocabSize = 32, HiddenSize = 16, IntermediateSize = 24, NumHiddenLayers = 2, NumAttentionHeads = 2,
        NumKeyValueHeads = 1, MaxPositionEmbeddings = 64, RmsNormEps = 1e-5,
    };

    /// <summary>Its weights (seeded), by Hugging Face name.</summary>
    public static Dictionary<string, Tensor> Weights() =>
        new LlamaForCausalLM(Config, new Generator(1)).StateDict().ToDictionary(kv => kv.Key, kv => kv.Value.Detach());

    /// <summary>config.json of <see cref="Config"/>.</summary>
    public static byte[] ConfigJson() => Encoding.UTF8.GetBytes(Config.ToJson());

    /// <summary>
    /// An HF directory's two files for <see cref="Config"/> with tied embeddings (no lm_head.weight) in f16:
    /// the other layout a real checkpoint has (a half-precision file converted at load).
    /// </summary>
    public static (byte[] Config, byte[] Weights) TiedHalf(string scratch)
    {
        var weights = Weights();
        weights.Remove(LlamaWeightNames.LmHead);
        var half = weights.ToDictionary(kv => kv.Key, kv => kv.Value.To(DType.F16));
        return (Encoding.UTF8.GetBytes((Config with { TieWordEmbeddings = true }).ToJson()), SafetensorsBytes(half, scratch));
    }

    /// <summary>A safetensors file of <paramref name="tensors"/> (written with Safetensors.Save, metadata included).</summary>
    public static byte[] SafetensorsBytes(IReadOnlyDictionary<string, Tensor> tensors, string scratch)
    {
        string path = Path.Combine(scratch, "seed.safetensors");
        Safetensors.Save(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        return File.ReadAllBytes(path);
    }

    /// <summary>A sharded checkpoint: two shards and the index mapping each tensor to one of them.</summary>
    public static Dictionary<string, byte[]> Sharded(string scratch)
    {
        var weights = Weights();
        var names = weights.Keys.Order(StringComparer.Ordinal).ToList();
        var first = names.Take(names.Count / 2).ToDictionary(n => n, n => weights[n]);
        var second = names.Skip(names.Count / 2).ToDictionary(n => n, n => weights[n]);
        const string a = "model-00001-of-00002.safetensors", b = "model-00002-of-00002.safetensors";
        var map = names.ToDictionary(n => n, n => first.ContainsKey(n) ? a : b);
        var index = JsonSerializer.SerializeToUtf8Bytes(new Dictionary<string, object>
        {
            ["metadata"] = new Dictionary<string, long> { ["total_size"] = weights.Values.Sum(t => t.Numel * 4L) },
            ["weight_map"] = map,
        }, new JsonSerializerOptions { WriteIndented = true });
        return new()
        {
            [Checkpoint.ConfigName] = ConfigJson(),
            [Checkpoint.IndexName] = index,
            [a] = SafetensorsBytes(first, scratch),
            [b] = SafetensorsBytes(second, scratch),
        };
    }

    /// <summary>A GGUF file with the model and the byte tokenizer's metadata (GgufModel.Save).</summary>
    public static byte[] Gguf(string scratch)
    {
        string path = Path.Combine(scratch, "seed.gguf");
        GgufModel.Save(path, Config, Weights(), ByteTokenizer(Config.VocabSize));
        return File.ReadAllBytes(path);
    }

    /// <summary>
    /// A llama2.c v0 checkpoint of <see cref="Config"/>: with a separate classifier (vocab_size negative), or
    /// with the classifier shared with the embedding (vocab_size positive, as stories260K.bin is).
    /// </summary>
    public static byte[] Llama2C(bool shared = false)
    {
        var c = Config;
        int hs = c.HeadDim, kv = c.KvDim, l = c.NumHiddenLayers, d = c.HiddenSize, f = c.IntermediateSize, v = c.VocabSize, t = c.MaxPositionEmbeddings;
        long floats = (long)v * d + 2L * l * d + 2L * l * d * d + 2L * l * kv * d + 3L * l * f * d + d + (long)t * hs + (shared ? 0 : (long)v * d);
        var bytes = new byte[28 + floats * 4];
        int[] header = [d, f, l, c.NumAttentionHeads, c.NumKeyValueHeads, shared ? v : -v, t];
        for (int i = 0; i < 7; i++) BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(4 * i), header[i]);
        var gen = new Generator(2);
        for (long i = 0; i < floats; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan((int)(28 + 4 * i)), (float)(gen.NextDouble() - 0.5) * 0.2f);
        return bytes;
    }

    /// <summary>
    /// A byte-fallback BPE tokenizer: &lt;unk&gt; &lt;s&gt; &lt;/s&gt;, the 256 byte pieces, then '▁' and a few
    /// letters and merges; <paramref name="vocab"/> caps its size (for a GGUF whose model has a small vocabulary).
    /// </summary>
    public static LlamaTokenizer ByteTokenizer(int vocab = int.MaxValue)
    {
        var (pieces, scores, types) = Vocabulary();
        int n = Math.Min(vocab, pieces.Count);
        return LlamaTokenizer.FromVocabulary(pieces[..n], scores[..n], types[..n]);
    }

    private static (List<string> Pieces, List<float> Scores, List<TokenType> Types) Vocabulary()
    {
        var pieces = new List<string> { "<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab", "l", "o", "lo", "\u2581lo" };
        var types = new List<TokenType> { TokenType.Unknown, TokenType.Control, TokenType.Control };
        types.AddRange(Enumerable.Repeat(TokenType.Normal, pieces.Count - 3));
        for (int b = 0; b < 256; b++) { pieces.Add(LlamaTokenizer.BytePiece(b)); types.Add(TokenType.Byte); }
        var scores = pieces.Select((_, i) => -(float)i).ToList();
        return (pieces, scores, types);
    }

    /// <summary>tokenizer.model (a SentencePiece ModelProto) for the byte tokenizer's vocabulary, BPE, byte fallback.</summary>
    public static byte[] SentencePieceModel()
    {
        var (pieces, scores, types) = Vocabulary();
        var file = new List<byte>();
        for (int i = 0; i < pieces.Count; i++)
        {
            var piece = new List<byte>();
            Bytes(piece, 1, Encoding.UTF8.GetBytes(pieces[i]));
            piece.Add(2 << 3 | 5);
            piece.AddRange(BitConverter.GetBytes(scores[i]));
            Varint(piece, 3, (ulong)types[i]);
            Bytes(file, 1, [.. piece]);
        }
        var trainer = new List<byte>();
        Varint(trainer, 3, 2);       // model_type BPE
        Varint(trainer, 35, 1);      // byte_fallback
        Varint(trainer, 40, 0);      // unk_id
        Varint(trainer, 41, 1);      // bos_id
        Varint(trainer, 42, 2);      // eos_id
        Varint(trainer, 43, unchecked((ulong)-1L)); // pad_id
        Bytes(file, 2, [.. trainer]);
        var normalizer = new List<byte>();
        Bytes(normalizer, 1, "identity"u8.ToArray());
        Varint(normalizer, 3, 1);    // add_dummy_prefix
        Varint(normalizer, 4, 0);    // remove_extra_whitespaces
        Varint(normalizer, 5, 1);    // escape_whitespaces
        Bytes(file, 3, [.. normalizer]);
        return [.. file];
    }

    private static void Varint(List<byte> to, int field, ulong value)
    {
        to.AddRange(ByteMutator.Varint((ulong)(field << 3)));
        to.AddRange(ByteMutator.Varint(value));
    }

    private static void Bytes(List<byte> to, int field, byte[] payload)
    {
        to.AddRange(ByteMutator.Varint((ulong)(field << 3 | 2)));
        to.AddRange(ByteMutator.Varint((ulong)payload.Length));
        to.AddRange(payload);
    }

    /// <summary>A Llama-2-style tokenizer.json over the byte tokenizer's vocabulary, with a few merges.</summary>
    public static byte[] TokenizerJson() => TokenizerJson(Vocabulary().Pieces, [["\u2581", "a"], ["a", "b"], ["l", "o"], ["\u2581", "lo"]]);

    /// <summary>
    /// A Llama-style tokenizer.json: the first three pieces special, BPE with byte fallback. <paramref name="preTokenizer"/>
    /// null: Llama 2's normalizer [Prepend("▁"), Replace(" ", "▁")]; otherwise that pre-tokenizer (raw JSON) and no normalizer.
    /// </summary>
    public static byte[] TokenizerJson(IReadOnlyList<string> vocab, IEnumerable<string[]> merges, bool arrayMerges = false,
        string? preTokenizer = null, bool fuseUnk = true, string modelType = "BPE")
    {
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteStartArray("added_tokens");
            for (int id = 0; id < 3; id++)
            {
                w.WriteStartObject();
                w.WriteNumber("id", id);
                w.WriteString("content", vocab[id]);
                w.WriteBoolean("special", true);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            if (preTokenizer is null)
            {
                w.WritePropertyName("normalizer");
                w.WriteRawValue("""{"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}""");
                w.WriteNull("pre_tokenizer");
            }
            else
            {
                w.WriteNull("normalizer");
                w.WritePropertyName("pre_tokenizer");
                w.WriteRawValue(preTokenizer);
            }
            w.WritePropertyName("decoder");
            w.WriteRawValue("""{"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}""");
            w.WriteStartObject("model");
            w.WriteString("type", modelType);
            w.WriteNull("dropout");
            w.WriteString("unk_token", "<unk>");
            w.WriteBoolean("fuse_unk", fuseUnk);
            w.WriteBoolean("byte_fallback", true);
            w.WriteStartObject("vocab");
            for (int id = 0; id < vocab.Count; id++) w.WriteNumber(vocab[id], id);
            w.WriteEndObject();
            w.WriteStartArray("merges");
            foreach (var m in merges)
            {
                if (arrayMerges)
                {
                    w.WriteStartArray();
                    w.WriteStringValue(m[0]);
                    w.WriteStringValue(m[1]);
                    w.WriteEndArray();
                }
                else w.WriteStringValue(m[0] + " " + m[1]);
            }
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return stream.ToArray();
    }

    /// <summary>LoRA r=2 on q_proj and v_proj of <see cref="Config"/>'s layers.</summary>
    public static LoraConfig Lora { get; } = new(2, 4.0, 0.0, ["q_proj", "v_proj"]);

    /// <summary>A PEFT adapter (adapter_config.json, adapter_model.safetensors) over the model at <paramref name="basePath"/>.</summary>
    public static Dictionary<string, byte[]> Adapter(string basePath, string scratch)
    {
        var model = LlamaForCausalLM.FromWeights(Config, Weights());
        TinyLlama.Training.Lora.Lora.Apply(model, Lora, new Generator(3));
        using (TinyLlama.Autograd.GradMode.NoGrad())
            foreach (var (name, p) in model.NamedParameters())
                if (name.Contains("lora_B", StringComparison.Ordinal)) p.Fill_(0.01);
        string dir = Path.Combine(scratch, "seed-adapter");
        PeftAdapter.Save(dir, model, Lora, basePath);
        return new()
        {
            [PeftAdapter.ConfigFileName] = File.ReadAllBytes(Path.Combine(dir, PeftAdapter.ConfigFileName)),
            [PeftAdapter.WeightsFileName] = File.ReadAllBytes(Path.Combine(dir, PeftAdapter.WeightsFileName)),
        };
    }

    /// <summary>The trainer the checkpoint seeds come from and that loads them: fixed model, data and options.</summary>
    public static SftTrainer Trainer()
    {
        var gen = new Generator(5);
        var examples = new List<SftExample>();
        for (int i = 0; i < 6; i++)
        {
            var ids = new int[8];
            ids[0] = 1;
            for (int j = 1; j < ids.Length; j++) ids[j] = 3 + gen.NextInt(Config.VocabSize - 3);
            var labels = ids.Select((id, j) => j < 3 ? TinyLlama.Training.TrainingInfo.IgnoreIndex : id).ToArray();
            examples.Add(new SftExample(ids, labels, $"seed:{i}"));
        }
        var model = new LlamaForCausalLM(Config, new Generator(11));
        var loader = new SftDataLoader(examples, 2, shuffle: true, seed: 5, padId: 0, maxLength: 16);
        return new SftTrainer(model, loader, new SftOptions { Steps = 6, Lr = 1e-3, Warmup = 1 }, rng: new Generator(7));
    }

    /// <summary>A training checkpoint after two steps: trainable.safetensors, optimizer.safetensors, trainer_state.json.</summary>
    public static Dictionary<string, byte[]> TrainingCheckpoint(string scratch)
    {
        var trainer = Trainer();
        trainer.TrainStep();
        trainer.TrainStep();
        string dir = Path.Combine(scratch, "seed-checkpoint");
        trainer.SaveCheckpoint(dir);
        return SftTrainer.CheckpointFiles.ToDictionary(f => f, f => File.ReadAllBytes(Path.Combine(dir, f)));
    }

    /// <summary>Alpaca records (instruction, input, output).</summary>
    public static byte[] Alpaca(bool lines)
    {
        object[] records =
        [
            new Dictionary<string, string> { ["instruction"] = "Name a color.", ["input"] = "", ["output"] = "Blue." },
            new Dictionary<string, string> { ["instruction"] = "Add them.", ["input"] = "17 and 25", ["output"] = "42, é 🦙" },
        ];
        return Records(records, lines);
    }

    /// <summary>ShareGPT conversations, one with a system turn.</summary>
    public static byte[] ShareGpt(bool lines)
    {
        static Dictionary<string, string> Turn(string from, string value) => new() { ["from"] = from, ["value"] = value };
        object[] records =
        [
            new Dictionary<string, object> { ["conversations"] = new[] { Turn("human", "Hi"), Turn("gpt", "Hello!") } },
            new Dictionary<string, object> { ["conversations"] = new[] { Turn("system", "Be brief."), Turn("human", "Why?"), Turn("gpt", "Because. é"), Turn("human", "Ok"), Turn("gpt", "🦙") } },
        ];
        return Records(records, lines);
    }

    private static byte[] Records(object[] records, bool lines)
    {
        var options = new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        if (!lines) return JsonSerializer.SerializeToUtf8Bytes(records, options);
        return Encoding.UTF8.GetBytes(string.Concat(records.Select(r => JsonSerializer.Serialize(r, options) + "\n")));
    }
}
