// LlamaConfig: presets and their parameter counts (worked out by hand below), config.json parsing,
// writing and round trip, one-line errors that name the file and field, and the RoPE inverse
// frequencies against the formula and against a hand-derived llama3 case.
using TinyLlama.Model;
using TinyLlama.Tests.Infrastructure;
using static TinyLlama.Tests.Formats.FormatTestUtil;

namespace TinyLlama.Tests.Formats;

public class LlamaConfigTests
{
    private const string Source = "models/test/config.json";

    private const string ValidJson = """
        {
          "architectures": ["LlamaForCausalLM"],
          "model_type": "llama",
          "vocab_size": 32000,
          "hidden_size": 64,
          "intermediate_size": 172,
          "num_hidden_layers": 2,
          "num_attention_heads": 8,
          "num_key_value_heads": 2,
          "rms_norm_eps": 1e-05,
          "rope_theta": 10000.0,
          "tie_word_embeddings": false,
          "max_position_embeddings": 512,
          "bos_token_id": 1,
          "eos_token_id": 2,
          "hidden_act": "silu"
        }
        """;

    // Per layer: q C*NH*HS + k, v C*NKV*HS each + o NH*HS*C; gate, up, down 3*C*F; two norms 2*C.
    // TinyLlama-1.1B (C 2048, NH 32, NKV 4, HS 64, F 5632, V 32000, L 22, untied):
    //   attention 4,194,304 + 2 * 524,288 + 4,194,304 = 9,437,184; MLP 3 * 2048 * 5632 = 34,603,008; norms 4096
    //   layer 44,044,288; x22 = 968,974,336; embedding 65,536,000; final norm 2048; LM head 65,536,000
    //   total 1,100,048,384.
    // stories15M (C 288, F 768, L 6, tied): layer 4*82,944 + 663,552 + 576 = 995,904; x6 = 5,975,424;
    //   + embedding 9,216,000 + 288 = 15,191,712.
    // stories110M (C 768, F 2048, L 12, tied): layer 2,359,296 + 4,718,592 + 1536 = 7,079,424; x12 = 84,953,088;
    //   + embedding 24,576,000 + 768 = 109,529,856.
    // stories260K (C 64, NH 8, NKV 4, HS 8, F 172, V 512, L 5, tied): layer 4096 + 2*2048 + 4096 + 33,024 + 128
    //   = 45,440; x5 = 227,200; + embedding 32,768 + 64 = 260,032 (its .bin holds exactly this many weights
    //   plus the 4096 floats of the old RoPE tables).
    [Theory]
    [InlineData("tinyllama-1.1b", 1_100_048_384L)]
    [InlineData("stories15M", 15_191_712L)]
    [InlineData("stories110M", 109_529_856L)]
    [InlineData("stories260K", 260_032L)]
    public void PresetParameterCountsMatchHandArithmetic(string preset, long expected) =>
        Assert.Equal(expected, LlamaConfig.Preset(preset).ParameterCount());

    [Fact]
    public void PresetsHaveTheDocumentedShapes()
    {
        var t = LlamaConfig.Preset("TinyLlama-1.1B");
        Assert.Equal((22, 2048, 32, 4, 5632, 32000, 2048, 64), (t.NumHiddenLayers, t.HiddenSize, t.NumAttentionHeads, t.NumKeyValueHeads, t.IntermediateSize, t.VocabSize, t.MaxPositionEmbeddings, t.HeadDim));
        Assert.Equal(1e-5, t.RmsNormEps);
        Assert.Equal(10000.0, t.RopeTheta);
        var s = LlamaConfig.Stories260K;
        Assert.Equal((5, 64, 8, 4, 172, 512, 512, 8), (s.NumHiddenLayers, s.HiddenSize, s.NumAttentionHeads, s.NumKeyValueHeads, s.IntermediateSize, s.VocabSize, s.MaxPositionEmbeddings, s.HeadDim));
        Assert.Equal(6, LlamaConfig.Stories15M.NumKeyValueHeads);
        Assert.Equal(1024, LlamaConfig.Stories110M.MaxPositionEmbeddings);
        Assert.Throws<ArgumentException>(() => LlamaConfig.Preset("gpt2"));
        foreach (var name in LlamaConfig.PresetNames) LlamaConfig.Preset(name).Validate();
    }

    [Fact]
    public void ParsesAllFields()
    {
        var c = LlamaConfig.FromJsonText(ValidJson, Source);
        Assert.Equal(32000, c.VocabSize);
        Assert.Equal(64, c.HiddenSize);
        Assert.Equal(172, c.IntermediateSize);
        Assert.Equal(2, c.NumHiddenLayers);
        Assert.Equal(8, c.NumAttentionHeads);
        Assert.Equal(2, c.NumKeyValueHeads);
        Assert.Equal(8, c.HeadDim);
        Assert.Equal(16, c.KvDim);
        Assert.Equal(512, c.MaxPositionEmbeddings);
        Assert.Equal(1e-5, c.RmsNormEps);
        Assert.Equal(10000.0, c.RopeTheta);
        Assert.Null(c.RopeScaling);
        Assert.False(c.TieWordEmbeddings);
        Assert.Equal(1, c.BosTokenId);
        Assert.Equal(2, c.EosTokenId);
        Assert.Equal([2], c.EosTokenIds);
    }

    [Fact]
    public void OptionalFieldsTakeHuggingFaceDefaults()
    {
        var c = LlamaConfig.FromJsonText("""{"model_type":"llama","vocab_size":100,"hidden_size":32,"intermediate_size":64,"num_hidden_layers":1,"num_attention_heads":4}""", Source);
        Assert.Equal(4, c.NumKeyValueHeads);
        Assert.Equal(8, c.HeadDim);
        Assert.Equal(2048, c.MaxPositionEmbeddings);
        Assert.Equal(1e-6, c.RmsNormEps);
        Assert.Equal(10000.0, c.RopeTheta);
        Assert.False(c.TieWordEmbeddings);
        Assert.Equal((1, 2), (c.BosTokenId, c.EosTokenId));
    }

    [Fact]
    public void ExplicitHeadDimAndEosListAreRead()
    {
        var json = ValidJson.Replace("\"eos_token_id\": 2", "\"eos_token_id\": [128001, 128008, 128009], \"head_dim\": 16");
        var c = LlamaConfig.FromJsonText(json, Source);
        Assert.Equal(16, c.HeadDim);
        Assert.Equal(128001, c.EosTokenId);
        Assert.Equal([128001, 128008, 128009], c.EosTokenIds);
        Assert.Equal(2 * 16, c.KvDim);
    }

    [Fact]
    public void JsonRoundTripPreservesEveryField()
    {
        var configs = new List<LlamaConfig>();
        foreach (var name in LlamaConfig.PresetNames) configs.Add(LlamaConfig.Preset(name));
        configs.Add(LlamaConfig.Stories260K with
        {
            HeadDim = 16, RopeTheta = 500000.0, BosTokenId = 128000, EosTokenIds = [128001, 128009],
            RopeScaling = new RopeScaling("llama3", 8.0, 1.0, 4.0, 8192),
        });
        configs.Add(LlamaConfig.TinyLlama1_1B with { RopeScaling = new RopeScaling("linear", 2.0), RmsNormEps = 1.2345678901234e-6 });
        foreach (var c in configs)
        {
            var back = LlamaConfig.FromJsonText(c.ToJson(), "roundtrip");
            Assert.Equal(c, back);
            Assert.Equal(c.ToJson(), back.ToJson());
        }
        // And a change in any field is seen by the comparison the round trip relies on.
        Assert.NotEqual(LlamaConfig.Stories260K, LlamaConfig.Stories260K with { RmsNormEps = 1e-6 });
        Assert.NotEqual(LlamaConfig.Stories260K, LlamaConfig.Stories260K with { EosTokenIds = [2, 3] });
    }

    [Fact]
    public void FromJsonReadsAFileAndNamesItInErrors()
    {
        using var dir = new TempDir();
        string path = dir.File("config.json");
        File.WriteAllText(path, LlamaConfig.Stories15M.ToJson());
        Assert.Equal(LlamaConfig.Stories15M, LlamaConfig.FromJson(path));
        File.WriteAllText(path, ValidJson.Replace("\"vocab_size\": 32000,", ""));
        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromJson(path));
        AssertMessage(e, path, "'vocab_size'", "missing");
    }

    [Theory]
    [InlineData("vocab_size")]
    [InlineData("hidden_size")]
    [InlineData("intermediate_size")]
    [InlineData("num_hidden_layers")]
    [InlineData("num_attention_heads")]
    public void MissingRequiredFieldIsNamed(string field)
    {
        var lines = ValidJson.Split('\n').Where(l => !l.Contains($"\"{field}\"")).ToArray();
        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromJsonText(string.Join('\n', lines), Source));
        AssertMessage(e, Source, $"'{field}'", "missing");
    }

    [Theory]
    [InlineData("\"hidden_size\": 64", "\"hidden_size\": \"64\"", "'hidden_size'", "integer")]
    [InlineData("\"hidden_size\": 64", "\"hidden_size\": 64.5", "'hidden_size'", "integer")]
    [InlineData("\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": \"tiny\"", "'rms_norm_eps'", "number")]
    [InlineData("\"tie_word_embeddings\": false", "\"tie_word_embeddings\": 0", "'tie_word_embeddings'", "true or false")]
    [InlineData("\"eos_token_id\": 2", "\"eos_token_id\": \"</s>\"", "'eos_token_id'", "integer")]
    [InlineData("\"num_key_value_heads\": 2", "\"num_key_value_heads\": [2]", "'num_key_value_heads'", "integer")]
    public void IllTypedFieldIsNamed(string from, string to, string field, string expected)
    {
        Assert.Contains(from, ValidJson);
        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromJsonText(ValidJson.Replace(from, to), Source));
        AssertMessage(e, Source, field, expected);
    }

    [Fact]
    public void OtherArchitecturesAreRejected()
    {
        var json = ValidJson.Replace("\"LlamaForCausalLM\"", "\"MistralForCausalLM\"").Replace("\"llama\"", "\"mistral\"");
        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromJsonText(json, Source));
        AssertMessage(e, Source, "not a LLaMA config", "mistral");

        var gpt2 = """{"architectures":["GPT2LMHeadModel"],"vocab_size":50257,"n_embd":768}""";
        e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromJsonText(gpt2, Source));
        AssertMessage(e, Source, "GPT2LMHeadModel");

        // Either marker alone is enough.
        LlamaConfig.FromJsonText(ValidJson.Replace("\"model_type\": \"llama\",", ""), Source);
        LlamaConfig.FromJsonText(ValidJson.Replace("\"architectures\": [\"LlamaForCausalLM\"],", ""), Source);
    }

    [Fact]
    public void NotJsonOrNotAnObjectIsRejected()
    {
        AssertMessage(Assert.Throws<InvalidDataException>(() => LlamaConfig.FromJsonText("{\"vocab_size\": ", Source)), Source, "not valid JSON");
        AssertMessage(Assert.Throws<InvalidDataException>(() => LlamaConfig.FromJsonText("[1, 2]", Source)), Source, "JSON object");
    }

    [Theory]
    [InlineData("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "hidden_act")]
    [InlineData("\"hidden_act\": \"silu\"", "\"hidden_act\": \"silu\", \"attention_bias\": true", "attention_bias")]
    [InlineData("\"rope_theta\": 10000.0,", "\"rope_theta\": 10000.0, \"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0},", "rope_scaling type 'dynamic'")]
    [InlineData("\"rope_theta\": 10000.0,", "\"rope_theta\": 10000.0, \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0},", "rope_scaling type 'yarn'")]
    [InlineData("\"rope_theta\": 10000.0,", "\"rope_theta\": 10000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0},", "'rope_scaling.low_freq_factor'")]
    [InlineData("\"rope_theta\": 10000.0,", "\"rope_theta\": 10000.0, \"rope_scaling\": {\"factor\": 8.0},", "'rope_scaling.rope_type'")]
    public void UnsupportedFeaturesAreRejected(string from, string to, string fragment)
    {
        Assert.Contains(from, ValidJson);
        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromJsonText(ValidJson.Replace(from, to), Source));
        AssertMessage(e, Source, fragment);
    }

    [Fact]
    public void RopeScalingIsParsed()
    {
        var json = ValidJson.Replace("\"rope_theta\": 10000.0,", "\"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192},");
        Assert.Equal(new RopeScaling("llama3", 32.0, 1.0, 4.0, 8192), LlamaConfig.FromJsonText(json, Source).RopeScaling);
        json = ValidJson.Replace("\"rope_theta\": 10000.0,", "\"rope_theta\": 10000.0, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 4},");
        Assert.Equal(new RopeScaling("linear", 4.0), LlamaConfig.FromJsonText(json, Source).RopeScaling);
        json = ValidJson.Replace("\"rope_theta\": 10000.0,", "\"rope_theta\": 10000.0, \"rope_scaling\": null,");
        Assert.Null(LlamaConfig.FromJsonText(json, Source).RopeScaling);
    }

    [Theory]
    [InlineData("\"num_attention_heads\": 8", "\"num_attention_heads\": 7", "does not divide hidden_size")]
    [InlineData("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", "does not divide num_attention_heads")]
    [InlineData("\"intermediate_size\": 172", "\"intermediate_size\": 0", "intermediate_size must be positive")]
    [InlineData("\"num_hidden_layers\": 2", "\"num_hidden_layers\": -1", "num_hidden_layers must be positive")]
    [InlineData("\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 0", "rms_norm_eps must be a positive")]
    public void InconsistentSizesAreRejected(string from, string to, string fragment)
    {
        Assert.Contains(from, ValidJson);
        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromJsonText(ValidJson.Replace(from, to), Source));
        AssertMessage(e, Source, fragment);
    }

    [Fact]
    public void HeadDimMayBreakTheHiddenDivisibilityWhenGiven()
    {
        var json = ValidJson.Replace("\"num_attention_heads\": 8", "\"num_attention_heads\": 6, \"head_dim\": 16").Replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
        var c = LlamaConfig.FromJsonText(json, Source);
        Assert.Equal(16, c.HeadDim);
        Assert.Equal(8, c.RopeInverseFrequencies().Length);
    }

    [Fact]
    public void RopeInverseFrequenciesMatchTheFormula()
    {
        var c = LlamaConfig.TinyLlama1_1B; // HS = 64
        var inv = c.RopeInverseFrequencies();
        Assert.Equal(32, inv.Length);
        for (int i = 0; i < 32; i++)
        {
            double naive = 1.0 / Math.Pow(10000.0, 2.0 * i / 64.0);
            Assert.True(Math.Abs(inv[i] - naive) <= 1e-15 * naive, $"inv_freq[{i}] = {inv[i]}, formula {naive}");
        }
        // HS = 8, θ = 10000: 10000^(-i/4) = 1, 0.1, 0.01, 0.001.
        var small = LlamaConfig.Stories260K.RopeInverseFrequencies();
        double[] hand = [1, 0.1, 0.01, 0.001];
        for (int i = 0; i < 4; i++) Assert.Equal(hand[i], small[i], 1e-15);
    }

    [Fact]
    public void LinearScalingDividesEveryFrequency()
    {
        var plain = LlamaConfig.Stories260K.RopeInverseFrequencies();
        var scaled = (LlamaConfig.Stories260K with { RopeScaling = new RopeScaling("linear", 4.0) }).RopeInverseFrequencies();
        for (int i = 0; i < plain.Length; i++) Assert.Equal(plain[i] / 4.0, scaled[i], 1e-18);
    }

    [Fact]
    public void Llama3ScalingMatchesHandDerivedValues()
    {
        // HS = 8, θ = 10000: inv_freq = 1, 0.1, 0.01, 0.001; wavelengths 2π/f = 6.28, 62.8, 628.3, 6283.2.
        // factor 8, low_freq_factor 1, high_freq_factor 4, original context 1024:
        //   low-frequency wavelength threshold 1024/1 = 1024, high-frequency threshold 1024/4 = 256.
        //   6.28 and 62.8 < 256: unchanged (1, 0.1).
        //   6283.2 > 1024: divided by the factor, 0.001/8 = 0.000125.
        //   628.3 lies between: smooth = (1024/628.3185 - 1)/(4 - 1) = (1.6297466 - 1)/3 = 0.2099155,
        //   f = (1 - smooth) * 0.01/8 + smooth * 0.01 = 0.7900845 * 0.00125 + 0.002099155 = 0.0030867610.
        var c = LlamaConfig.Stories260K with { RopeScaling = new RopeScaling("llama3", 8.0, 1.0, 4.0, 1024) };
        var inv = c.RopeInverseFrequencies();
        Assert.Equal(1.0, inv[0], 1e-15);
        Assert.Equal(0.1, inv[1], 1e-15);
        Assert.Equal(0.0030867610, inv[2], 1e-10);
        Assert.Equal(0.000125, inv[3], 1e-15);
    }

    [SkippableFact]
    public void ReferenceConfigsParse()
    {
        var tiny = LlamaConfig.FromJson(SharedData.Require("tiny-random-llama/config.json"));
        Assert.Equal((32000, 64, 172, 2, 8, 2, 512), (tiny.VocabSize, tiny.HiddenSize, tiny.IntermediateSize, tiny.NumHiddenLayers, tiny.NumAttentionHeads, tiny.NumKeyValueHeads, tiny.MaxPositionEmbeddings));
        var stories = LlamaConfig.FromJson(SharedData.Require("stories260K/hf/config.json"));
        Assert.Equal(LlamaConfig.Stories260K with { TieWordEmbeddings = false }, stories);
    }
}
