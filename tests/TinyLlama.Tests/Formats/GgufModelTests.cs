// LLaMA in GGUF (GgufModel): a random model saved as f32 or f16 and loaded back gives bit-identical
// logits (GQA, tied and untied, head width != C / NH); block-quantized weights (Q4_0 from the reference
// quantizer, Q8_0 from random blocks) come back byte for byte with the same config; the q/k row
// permutation equals convert_hf_to_gguf.py's reshape/swapaxes written as an index formula and is undone
// on load; names map both ways; Checkpoint.Load and CheckWeights accept GGUF and block weights.
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Training.Demo;
using static TinyLlama.Tests.Formats.FormatTestUtil;

namespace TinyLlama.Tests.Formats;

public class GgufModelTests
{
    private static LlamaConfig Tiny(bool tied = false, int hidden = 16, int heads = 4, int kvHeads = 2, int ffn = 24, int? headDim = null, int vocab = 37) =>
        new LlamaConfig
        {
            VocabSize = vocab, HiddenSize = hidden, IntermediateSize = ffn, NumHiddenLayers = 2,
            NumAttentionHeads = heads, NumKeyValueHeads = kvHeads, MaxPositionEmbeddings = 64,
            RmsNormEps = 1e-5, RopeTheta = 500000, TieWordEmbeddings = tied,
        } is var c && headDim is int h ? c with { HeadDim = h } : c;

    private static Dictionary<string, Tensor> RandomWeights(LlamaConfig config, int seed = 1) =>
        new LlamaForCausalLM(config, new Generator((ulong)seed)).StateDict().ToDictionary(kv => kv.Key, kv => kv.Value.Detach());

    private static float[] Logits(LlamaConfig config, IReadOnlyDictionary<string, Tensor> weights)
    {
        var model = LlamaForCausalLM.FromWeights(config, weights);
        int[] ids = [1, 5, 9, 2, 30, 7, 7, 11, 3, 36, 0, 4];
        return model.Forward(Tensor.FromArray(ids, [1, ids.Length])).ToArray<float>();
    }

    /// <summary>A small f32 model with a merges tokenizer inside (the fuzz test's seed file).</summary>
    internal static string WriteSmallModelWithTokenizer(TempDir dir)
    {
        var tokenizer = BpeTrainer.Train(["the llama ate the grass", "a llama and an alpaca"], 12).ToTokenizer();
        var config = Tiny(vocab: tokenizer.VocabSize);
        string path = dir.File("small.gguf");
        GgufModel.Save(path, config, RandomWeights(config), tokenizer);
        return path;
    }

    [Theory]
    [InlineData(DType.F32, false, null)]
    [InlineData(DType.F32, true, null)]
    [InlineData(DType.F16, false, null)]
    [InlineData(DType.F16, true, 8)]
    [InlineData(DType.BF16, false, null)]
    public void FloatModelRoundTripGivesIdenticalLogits(DType dtype, bool tied, int? headDim)
    {
        using var dir = new TempDir();
        var config = Tiny(tied, headDim: headDim);
        var weights = RandomWeights(config).ToDictionary(kv => kv.Key, kv => kv.Value.To(dtype));
        string path = dir.File("m.gguf");
        GgufModel.Save(path, config, weights);

        var file = GgufFile.Open(path);
        Assert.Equal(tied, !file.Contains("output.weight"));
        Assert.Equal(headDim is not null, file.Metadata.ContainsKey(GgufModel.Keys.KeyLength));
        Assert.Equal(dtype == DType.F32 ? 0L : dtype == DType.F16 ? 1L : 32L, file.Metadata[GgufModel.Keys.FileType].AsInteger());
        var (loadedConfig, loaded) = GgufModel.Load(file);
        Assert.Equal(config, loadedConfig);
        foreach (var (name, t) in weights) AssertBitEqual(t, loaded[name], name);
        Assert.Equal(Logits(config, weights), Logits(loadedConfig, loaded));
    }

    [Fact]
    public void ConfigFieldsRoundTrip()
    {
        using var dir = new TempDir();
        var config = Tiny() with { RopeTheta = 10000, RmsNormEps = 1e-6, MaxPositionEmbeddings = 4096, RopeScaling = new RopeScaling("linear", 4), BosTokenId = 5, EosTokenId = 6 };
        string path = dir.File("c.gguf");
        GgufModel.Save(path, config, RandomWeights(config), extraMetadata: new Dictionary<string, GgufValue>
        {
            [GgufModel.Keys.Name] = GgufValue.String("tiny"),
            ["general.author"] = GgufValue.String("tests"),
        });
        var file = GgufFile.Open(path);
        Assert.Equal(config, GgufModel.ReadConfig(file));
        Assert.Equal("\"tiny\"", file.Metadata[GgufModel.Keys.Name].ToString());
        Assert.Equal("llama", file.Metadata[GgufModel.Keys.Architecture].Value);
        Assert.Equal("\"tests\"", file.Metadata["general.author"].ToString());
        Assert.Throws<ArgumentException>(() => GgufModel.Save(path, config, RandomWeights(config),
            extraMetadata: new Dictionary<string, GgufValue> { [GgufModel.Keys.BlockCount] = GgufValue.UInt32(9) }));
        Assert.Throws<ArgumentException>(() => GgufModel.Save(path, config with { RopeScaling = new RopeScaling("llama3", 8) }, RandomWeights(config)));
    }

    [Fact]
    public void BlockWeightsRoundTripByteForByte()
    {
        using var dir = new TempDir();
        var config = Tiny(hidden: 64, heads: 4, kvHeads: 2, ffn: 96);
        var floats = RandomWeights(config);
        foreach (var (dtype, fileType) in new[] { (DType.Q4, 2L), (DType.Q8_0, 7L) })
        {
            var weights = new Dictionary<string, Tensor>();
            int seed = 0;
            foreach (var (name, t) in floats)
                weights[name] = t.Rank == 1 ? t
                    : dtype == DType.Q4 ? Quantize.Q4_0(t)
                    : Tensor.FromStorage(new CpuStorage(DType.Q8_0, GgufFileTests.RandomBlocks(t.Size(0) * t.Size(1) / 32 * 34, 34, seed++)), [t.Size(0), t.Size(1) / 32 * 34]);
            string path = dir.File($"{dtype}.gguf");
            GgufModel.Save(path, config, weights);
            var file = GgufFile.Open(path);
            Assert.Equal(fileType, file.Metadata[GgufModel.Keys.FileType].AsInteger());
            Assert.Equal([64L, 96], file.GetInfo("blk.1.ffn_up.weight").Dimensions); // logical ne, not bytes
            var (loadedConfig, loaded) = Checkpoint.Load(path);
            Assert.Equal(config, loadedConfig);
            foreach (var (name, t) in weights)
            {
                Assert.Equal(t.DType, loaded[name].DType);
                Assert.Equal(t.Shape, loaded[name].Shape);
                if (t.DType.IsQuantized()) Assert.True(TensorFileIO.BlockBytes(t).SequenceEqual(TensorFileIO.BlockBytes(loaded[name])), name);
                else AssertBitEqual(t, loaded[name], name);
            }
            // In the file, q's rows are permuted (row 1 of head 0 is HF row HS/2), so the bytes differ from HF's.
            Assert.False(TensorFileIO.BlockBytes(file.Get("blk.0.attn_q.weight")).SequenceEqual(TensorFileIO.BlockBytes(weights[LlamaWeightNames.QProj(0)])));
        }
    }

    [Fact]
    public void PermutationMatchesConvertHfToGgufAndInverts()
    {
        // convert_hf_to_gguf.py: w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols),
        // i.e. out[h, i, j] = in[h, j, i] over (head, half, pair) indices, written out directly.
        foreach (var (heads, headDim, cols) in new[] { (4, 4, 3), (2, 8, 5), (1, 2, 1), (3, 6, 2) })
        {
            int rows = heads * headDim, half = headDim / 2;
            var hf = Tensor.RandN([rows, cols], new Generator(7));
            var h = hf.ToArray<float>();
            var expected = new float[h.Length];
            for (int head = 0; head < heads; head++)
                for (int i = 0; i < half; i++)
                    for (int j = 0; j < 2; j++)
                        for (int c = 0; c < cols; c++)
                            expected[((head * half + i) * 2 + j) * cols + c] = h[((head * 2 + j) * half + i) * cols + c];
            var gguf = RopePermutation.Apply(hf, heads, toRotateHalf: false);
            Assert.Equal(expected, gguf.ToArray<float>());
            Assert.Equal(h, RopePermutation.Apply(gguf, heads, toRotateHalf: true).ToArray<float>());
            // llama2.c's loader uses the same rule.
            Assert.Equal(h, Llama2CFile.InterleavedToRotateHalf(expected, heads, headDim, cols));
        }
        // Rows of bytes: a Q8_0 matrix [8 rows, 2 blocks] moves whole 68-byte rows.
        var bytes = GgufFileTests.RandomBlocks(8 * 68, 34, 3);
        var q = Tensor.FromStorage(new CpuStorage(DType.Q8_0, bytes), [8, 68]);
        var permuted = TensorFileIO.BlockBytes(RopePermutation.Apply(q, 2, toRotateHalf: false)).ToArray();
        for (int row = 0; row < 8; row++)
        {
            int head = row / 4, i = row % 4 / 2, j = row % 2;
            int source = head * 4 + j * 2 + i;
            Assert.Equal(bytes.AsSpan(source * 68, 68).ToArray(), permuted.AsSpan(row * 68, 68).ToArray());
        }
    }

    [Fact]
    public void NamesMapBothWays()
    {
        var config = Tiny();
        var ggufNames = LlamaWeightNames.Expected(config).Select(e => GgufModel.GgufName(e.Name)).ToList();
        Assert.Contains("token_embd.weight", ggufNames);
        Assert.Contains("output.weight", ggufNames);
        Assert.Contains("blk.1.attn_output.weight", ggufNames);
        Assert.Contains("blk.0.ffn_gate.weight", ggufNames);
        Assert.Equal(ggufNames.Count, ggufNames.Distinct().Count());
        foreach (var (name, _) in LlamaWeightNames.Expected(config)) Assert.Equal(name, GgufModel.HfName(GgufModel.GgufName(name)!));
        Assert.Null(GgufModel.HfName("blk.01.attn_q.weight"));
        Assert.Null(GgufModel.HfName("blk.0.attn_qq.weight"));
        Assert.Null(GgufModel.GgufName("model.layers.x.mlp.up_proj.weight"));
    }

    [Fact]
    public void CheckWeightsTakesBlockMatricesByLogicalShapeButNotBlockNorms()
    {
        var config = Tiny(hidden: 32, heads: 4, kvHeads: 2, ffn: 64);
        var weights = RandomWeights(config);
        weights[LlamaWeightNames.UpProj(0)] = Quantize.Q4_0(weights[LlamaWeightNames.UpProj(0)]);
        Checkpoint.CheckWeights(config, weights, "w");
        var wrong = new Dictionary<string, Tensor>(weights) { [LlamaWeightNames.UpProj(0)] = Quantize.Q4_0(Tensor.Zeros([64, 64])) };
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.CheckWeights(config, wrong, "w")), "w", "up_proj", "[64, 64]", "needs [64, 32]");
        var norm = new Dictionary<string, Tensor>(weights) { [LlamaWeightNames.FinalNorm] = Tensor.FromStorage(new CpuStorage(DType.Q8_0, new byte[34]), [34]) };
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.CheckWeights(config, norm, "w")), "w", "model.norm.weight", "must be floating-point");
    }

    [Fact]
    public void LoadRefusesFilesThatAreNotLlamaModels()
    {
        using var dir = new TempDir();
        string path = dir.File("x.gguf");
        GgufWriter.Save(path, new Dictionary<string, GgufValue> { [GgufModel.Keys.Architecture] = GgufValue.String("gpt2") }, []);
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.Load(path)), path, "'gpt2'", "only 'llama'");
        var config = Tiny();
        GgufModel.Save(path, config, RandomWeights(config));
        var file = GgufFile.Open(path);
        var md = file.Metadata.Where(kv => kv.Key != GgufModel.Keys.BlockCount).ToList();
        string missing = dir.File("missing.gguf");
        GgufWriter.Save(missing, md, file.Tensors.Select(t => new KeyValuePair<string, Tensor>(t.Name, file.Get(t.Name))));
        AssertMessage(Assert.Throws<InvalidDataException>(() => GgufModel.Load(missing)), missing, "llama.block_count", "missing");
        var withoutK = file.Tensors.Where(t => t.Name != "blk.1.attn_k.weight").Select(t => new KeyValuePair<string, Tensor>(t.Name, file.Get(t.Name)));
        string noK = dir.File("nok.gguf");
        GgufWriter.Save(noK, file.Metadata, withoutK);
        AssertMessage(Assert.Throws<InvalidDataException>(() => GgufModel.Load(noK)), noK, "model.layers.1.self_attn.k_proj.weight", "missing");
    }
}
