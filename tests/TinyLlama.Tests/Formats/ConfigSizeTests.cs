// Sizes taken from files: hyper-parameters in config.json are checked against the weights actually present
// before anything is sized by them (one line naming the file and the field), products that overflow a
// tensor are refused, and a context length nobody uses costs nothing (the RoPE tables grow with the
// positions used; a chat session takes at most ChatSession.DefaultContext unless told more).
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Cli;
using TinyLlama.Training.Data;
using static TinyLlama.Tests.Formats.FormatTestUtil;

namespace TinyLlama.Tests.Formats;

public class ConfigSizeTests
{
    private static readonly LlamaConfig Small = new()
    {
        VocabSize = 16, HiddenSize = 8, IntermediateSize = 12, NumHiddenLayers = 2,
        NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 4, MaxPositionEmbeddings = 32, RmsNormEps = 1e-5, TieWordEmbeddings = true,
    };

    // The weights of Small, saved with `config` (which may disagree with them) as an HF directory.
    private static string WriteModel(TempDir dir, LlamaConfig config)
    {
        var g = new Generator(5);
        var weights = LlamaWeightNames.Expected(Small).ToDictionary(e => e.Name, e => Tensor.RandN(e.Shape, g));
        config.Save(dir.File(Checkpoint.ConfigName));
        Safetensors.Save(dir.File(Checkpoint.SafetensorsName), weights);
        return dir.Path;
    }

    public static TheoryData<string, string[]> Inconsistent() => new()
    {
        // field set too large for the weights (or for any tensor), and the fragments the one line must hold
        { "num_hidden_layers=2000000000", ["num_hidden_layers is 2000000000", "hold 2 layers", "no tensor of layer 2"] },
        { "num_hidden_layers=3", ["num_hidden_layers is 3", "hold 2 layers"] },
        { "num_hidden_layers=1", ["hold layer 1", "num_hidden_layers is 1"] },
        { "vocab_size=2000000000", ["vocab_size x hidden_size", "16000000000", "more than"] },
        { "vocab_size=17", ["model.embed_tokens.weight", "[16, 8]", "needs [17, 8]", "vocab_size x hidden_size"] },
        { "hidden_size=2147483646", ["num_attention_heads x head_dim x hidden_size", "more than"] },
        { "hidden_size=16", ["model.embed_tokens.weight", "needs [16, 16]"] },
        { "intermediate_size=2000000000", ["intermediate_size x hidden_size", "more than"] },
        { "intermediate_size=13", ["gate_proj", "needs [13, 8]", "intermediate_size and hidden_size"] },
        { "num_attention_heads=4", ["q_proj", "needs [16, 8]", "num_attention_heads x head_dim"] },
        { "num_key_value_heads=2", ["k_proj", "needs [8, 8]", "num_key_value_heads x head_dim"] },
        { "head_dim=1073741824", ["num_attention_heads x head_dim", "more than"] },
        { "head_dim=6", ["q_proj", "needs [12, 8]"] },
    };

    [Theory]
    [MemberData(nameof(Inconsistent))]
    public void ConfigInconsistentWithTheWeightsIsOneLineNamingTheField(string change, string[] fragments)
    {
        using var dir = new TempDir();
        var parts = change.Split('=');
        int value = int.Parse(parts[1]);
        var config = parts[0] switch
        {
            "num_hidden_layers" => Small with { NumHiddenLayers = value },
            "vocab_size" => Small with { VocabSize = value },
            "hidden_size" => Small with { HiddenSize = value },
            "intermediate_size" => Small with { IntermediateSize = value },
            "num_attention_heads" => Small with { NumAttentionHeads = value },
            "num_key_value_heads" => Small with { NumKeyValueHeads = value },
            "head_dim" => Small with { HeadDim = value },
            _ => throw new ArgumentException(change),
        };
        string path = WriteModel(dir, config);
        var e = Assert.Throws<InvalidDataException>(() => Checkpoint.Load(path));
        AssertMessage(e, path, fragments);
        // The CLI: exit 1 and that one line, whatever the verb.
        string ids = dir.File("a.ids");
        File.WriteAllText(ids, "1 2 3\n");
        var (code, _, err) = CliRunner.Run("perplexity", "--model", path, "--ids-file", ids);
        Assert.Contains(fragments[0], CliRunner.AssertOneLineError(1, code, err));
    }

    [Theory]
    [InlineData("llama.block_count", 2_000_000_000u, "num_hidden_layers is 2000000000")]
    [InlineData("llama.block_count", 1u, "hold layer 1")]
    [InlineData("llama.embedding_length", 2_000_000_000u, "more than the 2147483647 elements a tensor may hold")]
    [InlineData("llama.feed_forward_length", 4_000_000_000u, "llama.feed_forward_length")]
    [InlineData("llama.feed_forward_length", 13u, "gate_proj")]
    public void GgufHeaderSizesAreCheckedAgainstItsTensors(string key, uint value, string fragment)
    {
        using var dir = new TempDir();
        string good = dir.File("good.gguf"), bad = dir.File("bad.gguf");
        var g = new Generator(5);
        GgufModel.Save(good, Small, LlamaWeightNames.Expected(Small).ToDictionary(e => e.Name, e => Tensor.RandN(e.Shape, g)));
        var file = GgufFile.Open(good);
        var metadata = file.Metadata.ToDictionary(kv => kv.Key, kv => kv.Key == key ? GgufValue.UInt32(value) : kv.Value);
        GgufWriter.Save(bad, metadata, file.Tensors.Select(t => KeyValuePair.Create(t.Name, file.Get(t.Name))).ToList());
        AssertMessage(Assert.Throws<InvalidDataException>(() => GgufModel.Load(bad)), bad, fragment);
    }

    [Fact]
    public void FromWeightsChecksTheConfigBeforeBuildingTheModel()
    {
        var g = new Generator(5);
        var weights = LlamaWeightNames.Expected(Small).ToDictionary(e => e.Name, e => Tensor.RandN(e.Shape, g));
        var e = Assert.Throws<InvalidDataException>(() => LlamaForCausalLM.FromWeights(Small with { NumHiddenLayers = int.MaxValue }, weights));
        Assert.Contains("num_hidden_layers is 2147483647", e.Message);
    }

    [Fact]
    public void AHugeContextCostsOnlyThePositionsUsed()
    {
        // max_position_embeddings at int.MaxValue: eagerly tabulated RoPE (2^31 x 2 doubles, twice) or a KV cache of
        // that length would not fit in memory. Loading, scoring, generating and chatting must all work.
        using var dir = new TempDir();
        string path = WriteModel(dir, Small with { MaxPositionEmbeddings = int.MaxValue });
        var (config, weights) = Checkpoint.Load(path);
        var model = LlamaForCausalLM.FromWeights(config, weights);
        model.Eval();
        long before = GC.GetAllocatedBytesForCurrentThread();
        using (GradMode.NoGrad()) _ = model.Forward(Tensor.FromArray(new[] { 1, 2, 3 }, [1, 3]));
        var generated = TextGenerator.Generate(model, [1, 2], 4, SamplingOptions.Greedy).ToList();
        Assert.Equal(4, generated.Count);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 64L << 20, "a few positions allocated more than 64 MiB");
        // A chat session not told its context takes DefaultContext, not the claimed 2^31 positions.
        var chatModel = new LlamaForCausalLM(Small with { VocabSize = 260, MaxPositionEmbeddings = int.MaxValue }, new Generator(3));
        chatModel.Eval();
        using var chat = new ChatSession(chatModel, ChatTemplates.Create("raw", TinyLlama.Tests.Training.DataTestUtil.ByteTokenizer), SamplingOptions.Greedy, 4);
        Assert.Equal(ChatSession.DefaultContext, chat.Capacity);
        var reply = chat.Respond("hi");
        Assert.InRange(reply.Ids.Count, 1, 4);
    }

    [Fact]
    public void RopeTablesGrowWithThePositionsUsed()
    {
        // 150 positions decoded one at a time (the tables grow 64 -> 128 -> 256) equal one forward over all of them.
        var model = new LlamaForCausalLM(Small with { MaxPositionEmbeddings = 1000 }, new Generator(9));
        var ids = Enumerable.Range(0, 150).Select(i => i * 7 % 16).ToArray();
        using var _ = GradMode.NoGrad();
        var full = model.Forward(Tensor.FromArray(ids, [1, ids.Length])).ToArray<float>();
        var fresh = new LlamaForCausalLM(Small with { MaxPositionEmbeddings = 1000 }, new Generator(9));
        var cache = fresh.NewCache(1, ids.Length);
        int v = Small.VocabSize;
        for (int t = 0; t < ids.Length; t++)
        {
            var step = fresh.Forward(Tensor.FromArray(new[] { ids[t] }, [1, 1]), cache).ToArray<float>();
            for (int j = 0; j < v; j++)
                Assert.True(Math.Abs(full[t * v + j] - step[j]) <= 1e-5 * (1 + Math.Abs(step[j])), $"position {t} logit {j}: {step[j]} vs {full[t * v + j]}");
        }
    }
}
