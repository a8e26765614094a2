// Checkpoint.Load: dispatch on the kind of path, and the check of the weights against the config
// (missing tensor, wrong shape, non-float dtype), each a one-line error naming the path and tensor.
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Tensors;
using static TinyLlama.Tests.Formats.FormatTestUtil;

namespace TinyLlama.Tests.Formats;

public class CheckpointTests
{
    private static readonly LlamaConfig Small = new()
    {
        VocabSize = 16, HiddenSize = 8, IntermediateSize = 12, NumHiddenLayers = 1,
        NumAttentionHeads = 2, NumKeyValueHeads = 2, MaxPositionEmbeddings = 32, RmsNormEps = 1e-5, TieWordEmbeddings = true,
    };

    private static Dictionary<string, Tensor> Weights(LlamaConfig config)
    {
        var g = new Generator(5);
        return LlamaWeightNames.Expected(config).ToDictionary(e => e.Name, e => Tensor.RandN(e.Shape, g));
    }

    private static string WriteModel(TempDir dir, Dictionary<string, Tensor> weights, LlamaConfig config)
    {
        config.Save(dir.File(Checkpoint.ConfigName));
        Safetensors.Save(dir.File(Checkpoint.SafetensorsName), weights, new Dictionary<string, string> { ["format"] = "pt" });
        return dir.Path;
    }

    [Fact]
    public void LoadsADirectoryAndASafetensorsFile()
    {
        using var dir = new TempDir();
        var weights = Weights(Small);
        WriteModel(dir, weights, Small);
        foreach (var path in new[] { dir.Path, dir.File(Checkpoint.SafetensorsName) })
        {
            var (config, loaded) = Checkpoint.Load(path);
            Assert.Equal(Small, config);
            Assert.Equal(weights.Count, loaded.Count);
            foreach (var (name, t) in weights) AssertBitEqual(t, loaded[name], name);
        }
    }

    [Fact]
    public void MissingTensorIsNamed()
    {
        using var dir = new TempDir();
        var weights = Weights(Small);
        weights.Remove(LlamaWeightNames.UpProj(0));
        WriteModel(dir, weights, Small);
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.Load(dir.Path)), dir.Path, "'model.layers.0.mlp.up_proj.weight'", "missing", "[12, 8]");
    }

    [Fact]
    public void UntiedConfigNeedsTheLmHead()
    {
        using var dir = new TempDir();
        WriteModel(dir, Weights(Small), Small with { TieWordEmbeddings = false });
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.Load(dir.Path)), dir.Path, "'lm_head.weight'", "missing");
    }

    [Fact]
    public void WrongShapeOrDTypeIsNamed()
    {
        using var dir = new TempDir();
        var weights = Weights(Small);
        weights[LlamaWeightNames.KProj(0)] = Tensor.Zeros([4, 8]);
        WriteModel(dir, weights, Small);
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.Load(dir.Path)), dir.Path, "'model.layers.0.self_attn.k_proj.weight'", "shape [4, 8]", "needs [8, 8]");

        weights = Weights(Small);
        weights[LlamaWeightNames.FinalNorm] = Tensor.Zeros([8], DType.I32);
        WriteModel(dir, weights, Small);
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.Load(dir.Path)), dir.Path, "'model.norm.weight'", "int32");
    }

    [Fact]
    public void UnusablePathsAreNamed()
    {
        using var dir = new TempDir();
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.Load(dir.Path)), dir.Path, "no config.json");
        string other = dir.File("weights.pt");
        File.WriteAllText(other, "x");
        AssertMessage(Assert.Throws<InvalidDataException>(() => Checkpoint.Load(other)), other, "not a checkpoint");
        Assert.Throws<FileNotFoundException>(() => Checkpoint.Load(dir.File("nothing-here")));
    }
}
