// Corrupt weights that parse: NaN or infinity in a weight. WeightCheck (--check-tensors) finds the first bad
// element in every float dtype and the first bad scale in every block format; without the flag, generate,
// perplexity, chat and bench say in one line (exit 1) that the logits are not finite, for a NaN in each kind
// of tensor (embedding, norm, attention and MLP projections, LM head), instead of printing <unk> or null.
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.Quantization;
using TinyLlama.Tensors;
using TinyLlama.Tests.Cli;
using static TinyLlama.Tests.Formats.FormatTestUtil;

namespace TinyLlama.Tests.Formats;

public class NonFiniteWeightTests
{
    private static readonly LlamaConfig Small = new()
    {
        VocabSize = 16, HiddenSize = 8, IntermediateSize = 12, NumHiddenLayers = 2,
        NumAttentionHeads = 2, NumKeyValueHeads = 1, MaxPositionEmbeddings = 32, RmsNormEps = 1e-5, TieWordEmbeddings = false,
    };

    public static TheoryData<DType, double> FloatCases() => new()
    {
        { DType.F32, double.NaN }, { DType.F32, double.PositiveInfinity }, { DType.F32, double.NegativeInfinity },
        { DType.F64, double.NaN }, { DType.F64, double.NegativeInfinity },
        { DType.F16, double.NaN }, { DType.F16, double.PositiveInfinity },
        { DType.BF16, double.NaN }, { DType.BF16, double.NegativeInfinity },
    };

    [Theory]
    [MemberData(nameof(FloatCases))]
    public void FirstNonFiniteElementIsFound(DType dtype, double bad)
    {
        var values = Enumerable.Range(0, 37).Select(i => (i - 18) * 0.25).ToArray();
        Assert.Equal(-1, WeightCheck.IndexOfNonFinite(Tensor.FromDoubles(values, [37], dtype)));
        values[23] = bad;
        values[30] = double.NaN;
        Assert.Equal(23, WeightCheck.IndexOfNonFinite(Tensor.FromDoubles(values, [37], dtype)));
        // A large finite value is not flagged (f16's largest is 65504).
        values = [65504, -65504, 1e-7, 0];
        Assert.Equal(-1, WeightCheck.IndexOfNonFinite(Tensor.FromDoubles(values, [4], dtype)));
        // A strided view is read in row-major order.
        var m = Tensor.FromDoubles(Enumerable.Range(0, 12).Select(i => i == 5 ? bad : i).ToArray(), [3, 4], dtype).Transpose(0, 1); // [4, 3]: (1, 1) holds element 5
        Assert.Equal(4, WeightCheck.IndexOfNonFinite(m));
    }

    [Theory]
    [InlineData(QuantType.Q4_0, 0)]
    [InlineData(QuantType.Q8_0, 0)]
    [InlineData(QuantType.Q4_K, 0)]
    [InlineData(QuantType.Q4_K, 2)]
    [InlineData(QuantType.Q6_K, 208)]
    public void FirstNonFiniteBlockScaleIsFound(QuantType type, int scaleOffset)
    {
        var traits = type.Traits();
        var blocks = Quantize.RandomBlocks(type, 3, 2 * traits.BlockSize, new Generator(4)); // 6 blocks, finite scales
        Assert.Equal(-1, WeightCheck.IndexOfNonFinite(blocks));
        var bytes = blocks.ToArray<byte>();
        int block = 4;
        bytes[block * traits.BlockBytes + scaleOffset] = 0x00;
        bytes[block * traits.BlockBytes + scaleOffset + 1] = 0x7C; // binary16 +infinity
        var bad = Quantize.FromBytes(bytes, 3, type.ToDType());
        Assert.Equal(block * traits.BlockBytes, WeightCheck.IndexOfNonFinite(bad));
        var e = Assert.Throws<InvalidDataException>(() => WeightCheck.Check(new Dictionary<string, Tensor> { ["w"] = bad }, "m.gguf"));
        AssertMessage(e, "m.gguf", "'w'", "scale of block 4");
    }

    // Small's random weights in `dtype`, with a NaN in `poisoned`: its first element, or for the embedding the
    // first feature of every token (an unused token's row changes no logit).
    private static string WriteModel(TempDir dir, string poisoned, DType dtype)
    {
        var g = new Generator(5);
        var weights = LlamaWeightNames.Expected(Small).ToDictionary(e => e.Name, e =>
        {
            var values = Tensor.RandN(e.Shape, g).ToArray<double>();
            if (e.Name == poisoned)
                for (int i = 0; i < (e.Name == LlamaWeightNames.Embedding ? values.Length : 1); i += e.Shape[^1]) values[i] = double.NaN;
            return Tensor.FromDoubles(values, e.Shape, dtype);
        });
        Small.Save(dir.File(Checkpoint.ConfigName));
        Safetensors.Save(dir.File(Checkpoint.SafetensorsName), weights);
        return dir.Path;
    }

    public static TheoryData<string, DType> PoisonedTensors() => new()
    {
        { LlamaWeightNames.Embedding, DType.F32 },
        { LlamaWeightNames.InputLayerNorm(0), DType.BF16 },
        { LlamaWeightNames.QProj(1), DType.F16 },
        { LlamaWeightNames.VProj(0), DType.F32 },
        { LlamaWeightNames.DownProj(1), DType.BF16 },
        { LlamaWeightNames.FinalNorm, DType.F32 },
        { LlamaWeightNames.LmHead, DType.F16 },
    };

    [Theory]
    [MemberData(nameof(PoisonedTensors))]
    public void ANaNWeightIsOneLineNotATokenOrANullScore(string poisoned, DType dtype)
    {
        using var dir = new TempDir();
        string model = WriteModel(dir, poisoned, dtype);
        string ids = dir.File("a.ids");
        File.WriteAllText(ids, "1 3 5 7\n");

        var (code, _, err) = CliRunner.Run("generate", "--model", model, "--prompt-ids", "1,3", "--max-tokens", "3", "--json");
        Assert.Contains("NaN", CliRunner.AssertOneLineError(1, code, err));
        (code, _, err) = CliRunner.Run("perplexity", "--model", model, "--ids-file", ids, "--json");
        Assert.Contains("NaN", CliRunner.AssertOneLineError(1, code, err));
        (code, _, err) = CliRunner.Run("bench", "generate", "--model", model, "-p", "2", "-n", "2", "-r", "1", "--json");
        Assert.Contains("NaN", CliRunner.AssertOneLineError(1, code, err));

        // --check-tensors names the tensor before anything runs, on every verb that loads a model.
        foreach (var args in new[]
        {
            new[] { "info", "--model", model },
            ["perplexity", "--model", model, "--ids-file", ids],
            ["generate", "--model", model, "--prompt-ids", "1", "--max-tokens", "1", "--json"],
            ["bench", "generate", "--model", model, "-p", "2", "-n", "2", "-r", "1"],
            ["quantize", "--model", model, "--out", dir.File("q.gguf"), "--type", "q8_0"],
        })
        {
            (code, _, err) = CliRunner.Run([.. args, "--check-tensors"]);
            string line = CliRunner.AssertOneLineError(1, code, err);
            Assert.Contains($"'{poisoned}'", line);
            Assert.Contains("NaN or infinite", line);
        }
        (code, _, _) = CliRunner.Run("info", "--model", model);
        Assert.Equal(0, code); // without the flag, info does not read the weights' values
    }

    [Fact]
    public void ChatSaysSoInOneLine()
    {
        // The chat verb lets InvalidDataException through to its one-line report (exit 1), as generate does.
        var model = new LlamaForCausalLM(Small with { VocabSize = 260 }, new Generator(6));
        model.Eval();
        using (TinyLlama.Autograd.GradMode.NoGrad()) model.Model.Norm.Weight.CopyFrom_(Tensor.Full([8], double.NaN));
        using var chat = new TinyLlama.Generation.ChatSession(model,
            TinyLlama.Training.Data.ChatTemplates.Create("raw", TinyLlama.Tests.Training.DataTestUtil.ByteTokenizer), TinyLlama.Generation.SamplingOptions.Greedy, 4);
        var e = Assert.Throws<InvalidDataException>(() => chat.Respond("hello"));
        Assert.Contains("NaN logit", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
