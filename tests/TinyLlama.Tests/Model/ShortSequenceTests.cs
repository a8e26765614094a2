// Forward and backward passes over short sequences without a KV cache (T = 1, 2 and odd lengths), on the
// CPU backend and on ILGPU's CPU accelerator. A one-position sequence is where a transposed view keeps
// the row stride of its old place (its size-1 dimension is never stepped), which attention once refused
// ("k and v need dense rows"): the perplexity of a one-token text and training on two-token sequences
// failed. References: the logits of the cached decode (one token at a time, which never took that path),
// central finite differences in f64 for the gradients on the CPU, and the CPU backend's gradients for ILGPU.
using TinyLlama.Autograd;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Infrastructure;

namespace TinyLlama.Tests.Model;

[Collection("ilgpu")]
public class ShortSequenceTests
{
    private static readonly int[] Ids = [1, 4, 7, 2, 9, 3, 8];
    private static readonly int[] Targets = [4, 7, 2, 9, 3, 8, 5];

    private static Device DeviceNamed(string name) => name == "cpu" ? Device.Cpu : IlgpuDevices.Resolve(name);

    [Theory]
    [InlineData("cpu", 1)]
    [InlineData("cpu", 2)]
    [InlineData("cpu", 3)]
    [InlineData("cpu", 7)]
    [InlineData("ilgpu-cpu", 1)]
    [InlineData("ilgpu-cpu", 2)]
    [InlineData("ilgpu-cpu", 5)]
    public void ForwardWithoutCacheEqualsCachedDecode(string device, int t)
    {
        var dev = DeviceNamed(device);
        var model = new LlamaForCausalLM(LlamaTests.Tiny(), new Generator(11), DType.F32, dev);
        using var _ = GradMode.NoGrad();
        var full = model.Forward(Tensor.FromArray(Ids[..t], [1, t], dev)).To(Device.Cpu).ToArray<float>(); // (1, T, V)
        var reference = new LlamaForCausalLM(LlamaTests.Tiny(), new Generator(11));
        var cache = reference.NewCache(1, t);
        int v = reference.Config.VocabSize;
        Assert.Equal(t * v, full.Length);
        for (int p = 0; p < t; p++)
        {
            var step = reference.Forward(Tensor.FromArray(new[] { Ids[p] }, [1, 1]), cache).ToArray<float>();
            for (int j = 0; j < v; j++)
                Assert.True(Math.Abs(full[p * v + j] - step[j]) <= 1e-5 * (1 + Math.Abs(step[j])), $"{device} T={t} position {p} logit {j}: {full[p * v + j]} vs {step[j]}");
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void GradientOfShortSequencesMatchesFiniteDifferences(int t)
    {
        var cfg = LlamaTests.Tiny(vocab: 11, hidden: 8, layers: 2, heads: 2, kvHeads: 1, ffn: 12, maxPos: 16);
        var model = new LlamaForCausalLM(cfg, new Generator(3), DType.F64);
        using (GradMode.NoGrad())
            foreach (var p in model.Parameters()) p.CopyFrom_(Tensor.RandN(p.Shape, new Generator(4), DType.F64, null, 0, 0.5));
        var names = model.NamedParameters().Select(p => p.Name).ToArray();
        var values = model.NamedParameters().Select(p => p.Value.Detach().Clone()).ToArray();
        var ids = Tensor.FromArray(Ids[..t].Select(i => i % 11).ToArray(), [1, t]);
        var targets = Tensor.FromArray(Targets[..t].Select(i => i % 11).ToArray(), [1, t]);
        GradCheck.Check(ps =>
        {
            for (int i = 0; i < ps.Length; i++) model.SetParameter(names[i], ps[i]);
            return Functional.CrossEntropy(model.Forward(ids), targets).Reshape(1);
        }, values, atol: 1e-7, rtol: 1e-5);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(5)]
    public void TrainingStepOnIlgpuEqualsCpu(int t)
    {
        var (cpuLoss, cpuGrads) = LossAndGradients(Device.Cpu, t);
        var (devLoss, devGrads) = LossAndGradients(IlgpuDevices.Resolve("ilgpu-cpu"), t);
        Assert.True(Math.Abs(cpuLoss - devLoss) <= 1e-5 * Math.Abs(cpuLoss), $"T={t}: loss {devLoss} on ilgpu-cpu vs {cpuLoss} on cpu");
        Assert.Equal(cpuGrads.Count, devGrads.Count);
        foreach (var (name, expected) in cpuGrads)
        {
            var actual = devGrads[name];
            double scale = expected.Max(Math.Abs);
            for (int i = 0; i < expected.Length; i++)
                Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-4 * scale + 1e-7, $"T={t} {name}[{i}]: {actual[i]} vs {expected[i]}");
        }
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("ilgpu-cpu")]
    public void PerplexityOfAOneTokenTextIsItsOnePrediction(string device)
    {
        // BOS + one token: the model sees one position and predicts one token; the NLL is -log softmax(logits)[5].
        using var dir = new TinyLlama.Tests.Formats.TempDir();
        var model = new LlamaForCausalLM(LlamaTests.Tiny(), new Generator(13));
        model.Config.Save(dir.File(TinyLlama.Formats.Checkpoint.ConfigName));
        TinyLlama.Formats.Safetensors.Save(dir.File(TinyLlama.Formats.Checkpoint.SafetensorsName), model.NamedParameters().ToDictionary(p => p.Name, p => p.Value.Detach()));
        File.WriteAllText(dir.File("one.ids"), "1 5\n");
        var (code, output, err) = TinyLlama.Tests.Cli.CliRunner.Run("perplexity", "--model", dir.Path, "--ids-file", dir.File("one.ids"), "--json", "--device", device);
        Assert.True(code == 0, err);
        double nll = System.Text.Json.JsonDocument.Parse(output).RootElement.GetProperty("mean_nll").GetDouble();
        float[] logits;
        using (GradMode.NoGrad()) logits = model.Forward(Tensor.FromArray(new[] { 1 }, [1, 1])).ToArray<float>();
        double max = logits.Max(), sum = logits.Sum(x => Math.Exp(x - max));
        double expected = -(logits[5] - max - Math.Log(sum));
        Assert.True(Math.Abs(nll - expected) <= 1e-5 * expected, $"{device}: mean NLL {nll}, expected {expected}");
    }

    private static (double Loss, Dictionary<string, float[]> Grads) LossAndGradients(Device dev, int t)
    {
        var model = new LlamaForCausalLM(LlamaTests.Tiny(), new Generator(21), DType.F32, dev);
        var loss = Functional.CrossEntropy(model.Forward(Tensor.FromArray(Ids[..t], [1, t], dev)), Tensor.FromArray(Targets[..t], [1, t], dev));
        loss.Backward();
        var grads = model.NamedParameters().ToDictionary(p => p.Name, p => p.Value.Grad!.To(Device.Cpu).ToArray<float>());
        return (loss.Item(), grads);
    }
}
