// The loaders against the reference checkpoints in ../shared/reference: stories260K as a llama2.c .bin
// must equal, bit for bit, the same weights converted to Hugging Face's layout by a PyTorch script
// (which proves the llama2.c layout and the RoPE row permutation); tiny-random-llama must load with
// every tensor the config implies. Skipped where the reference folder is absent.
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Infrastructure;
using static TinyLlama.Tests.Formats.FormatTestUtil;

namespace TinyLlama.Tests.Formats;

public class ReferenceCheckpointTests
{
    [SkippableFact]
    public void Stories260KBinEqualsHfSafetensorsBitExactly()
    {
        var bin = Llama2CFile.Load(SharedData.Require("stories260K/stories260K.bin"));
        var hfDir = SharedData.Require("stories260K/hf");
        var hfConfig = LlamaConfig.FromJson(Path.Combine(hfDir, "config.json"));
        var hf = SafetensorsFile.Open(Path.Combine(hfDir, "model.safetensors"));

        // The .bin shares its classifier with the embedding (positive vocab_size), so it is tied and has no
        // lm_head; the conversion script wrote the embedding again as lm_head with tie_word_embeddings false.
        // Everything else in the configs agrees.
        Assert.True(bin.Config.TieWordEmbeddings);
        Assert.False(hfConfig.TieWordEmbeddings);
        Assert.Equal(hfConfig, bin.Config with { TieWordEmbeddings = false });
        Assert.Equal(LlamaConfig.Stories260K, bin.Config);

        Assert.Equal(hf.Names.Where(n => n != LlamaWeightNames.LmHead).Order(), bin.Weights.Keys.Order());
        foreach (var (name, t) in bin.Weights) AssertBitEqual(hf.Get(name), t, name);
        AssertBitEqual(hf.Get(LlamaWeightNames.LmHead), bin.Weights[LlamaWeightNames.Embedding], "lm_head vs shared embedding");
    }

    [SkippableFact]
    public void Stories260KWithoutThePermutationWouldDiffer()
    {
        // Guards the test above against passing vacuously: the raw llama2.c q rows differ from HF's.
        var binPath = SharedData.Require("stories260K/stories260K.bin");
        var hf = SafetensorsFile.Open(SharedData.Require("stories260K/hf/model.safetensors"));
        var q0 = Llama2CFile.Load(binPath).Weights[LlamaWeightNames.QProj(0)].ToArray<float>();
        var hfQ0 = hf.Get(LlamaWeightNames.QProj(0)).ToArray<float>();
        Assert.Equal(hfQ0, q0);
        // Undo the permutation row by row (HS 8): llama2.c row 2i + j = HF row j*4 + i.
        var raw = new float[q0.Length];
        for (int h = 0; h < 8; h++)
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 2; j++)
                    Array.Copy(q0, (h * 8 + j * 4 + i) * 64, raw, (h * 8 + 2 * i + j) * 64, 64);
        Assert.NotEqual(hfQ0, raw);
        Assert.Equal(q0, Llama2CFile.InterleavedToRotateHalf(raw, 8, 8, 64));
    }

    [SkippableFact]
    public void CheckpointLoadGivesTheSameModelFromBinAndHfDirectory()
    {
        var (binConfig, binWeights) = Checkpoint.Load(SharedData.Require("stories260K/stories260K.bin"));
        var (hfConfig, hfWeights) = Checkpoint.Load(SharedData.Require("stories260K/hf"));
        Assert.Equal(hfConfig, binConfig with { TieWordEmbeddings = false });
        foreach (var (name, t) in binWeights) AssertBitEqual(hfWeights[name], t, name);
        var viaFile = Checkpoint.Load(SharedData.Require("stories260K/hf/model.safetensors"));
        Assert.Equal(hfConfig, viaFile.Config);
    }

    [SkippableFact]
    public void TinyRandomLlamaHasEveryTensorTheConfigImplies()
    {
        var dir = SharedData.Require("tiny-random-llama");
        var (config, weights) = Checkpoint.Load(dir);
        Assert.Equal((2, 64, 8, 2, 172, 32000, 8), (config.NumHiddenLayers, config.HiddenSize, config.NumAttentionHeads, config.NumKeyValueHeads, config.IntermediateSize, config.VocabSize, config.HeadDim));
        Assert.False(config.TieWordEmbeddings);

        // 1 embedding + 2 layers x 9 + final norm + lm_head.
        Assert.Equal(21, LlamaWeightNames.Expected(config).Count);
        foreach (var (name, shape) in LlamaWeightNames.Expected(config))
        {
            Assert.True(weights.ContainsKey(name), $"{name} missing");
            Assert.Equal(shape, weights[name].Shape);
            Assert.Equal(DType.F32, weights[name].DType);
        }
        // Spelled out for the shapes that GQA and the MLP make distinctive.
        Assert.Equal([32000, 64], weights["model.embed_tokens.weight"].Shape);
        Assert.Equal([64, 64], weights["model.layers.1.self_attn.q_proj.weight"].Shape);
        Assert.Equal([16, 64], weights["model.layers.1.self_attn.k_proj.weight"].Shape);
        Assert.Equal([16, 64], weights["model.layers.0.self_attn.v_proj.weight"].Shape);
        Assert.Equal([172, 64], weights["model.layers.0.mlp.gate_proj.weight"].Shape);
        Assert.Equal([64, 172], weights["model.layers.1.mlp.down_proj.weight"].Shape);
        Assert.Equal([32000, 64], weights["lm_head.weight"].Shape);
        // Views onto the mapped file, not copies.
        Assert.True(((CpuStorage)weights["model.embed_tokens.weight"].Storage).IsExternal);
    }

    [SkippableFact]
    public void ReferenceSafetensorsSurviveOurWriter()
    {
        // Read the PyTorch-written file, write it with our writer, read it back: same names, metadata, bits.
        var src = SafetensorsFile.Open(SharedData.Require("tiny-random-llama/model.safetensors"));
        using var dir = new TempDir();
        string path = dir.File("copy.safetensors");
        Safetensors.Save(path, src.GetAll(), src.Metadata);
        var copy = SafetensorsFile.Open(path);
        Assert.Equal(src.Metadata, copy.Metadata);
        Assert.Equal(src.Names.Order(), copy.Names.Order());
        foreach (var name in src.Names) AssertBitEqual(src.Get(name), copy.Get(name), name);
    }
}
