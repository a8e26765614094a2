// The model against the shared reference outputs: llama2.c run.c's greedy ids for stories260K (from
// the .bin and from the HF directory), and a PyTorch reference's per-token NLL and top-5 last logits
// for tiny-random-llama. Skipped with a message where ../shared/reference is absent.
using System.Text.Json;
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Tokenizers;

namespace TinyLlama.Tests.Model;

public class ReferenceModelTests
{
    private static LlamaForCausalLM Load(string relativePath)
    {
        var ckpt = Checkpoint.Load(SharedData.Require(relativePath));
        return LlamaForCausalLM.FromWeights(ckpt.Config, ckpt.Weights);
    }

    [SkippableTheory]
    [InlineData("stories260K/stories260K.bin")]
    [InlineData("stories260K/hf")]
    public void Stories260KReproducesRunCGreedyIds(string modelPath)
    {
        var expected = JsonDocument.Parse(File.ReadAllText(SharedData.Require("stories260K/greedy.json"))).RootElement;
        var prompt = expected.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var greedy = expected.GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var model = Load(modelPath);
        // No stop tokens: run.c's ids are compared one for one.
        var ids = TextGenerator.Generate(model, prompt, greedy.Length, SamplingOptions.Greedy).ToArray();
        Assert.Equal(greedy, ids);
    }

    [SkippableFact]
    public void TinyRandomLlamaMatchesPyTorchNllAndTopLogits()
    {
        var expected = JsonDocument.Parse(File.ReadAllText(SharedData.Require("tiny-random-llama/expected.json"))).RootElement;
        var model = Load("tiny-random-llama");
        var tokenizer = LlamaTokenizer.Load(SharedData.Require("tiny-random-llama/tokenizer.model"));
        foreach (var item in expected.GetProperty("forward").EnumerateArray())
        {
            var ids = item.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            // The reference's ids are BOS + encode(text): our tokenizer must agree before the model is compared.
            Assert.Equal(ids, new[] { tokenizer.BosId }.Concat(tokenizer.Encode(item.GetProperty("text").GetString()!)).ToArray());
            int t = ids.Length;
            float[] logits;
            using (GradMode.NoGrad())
                logits = model.Forward(Tensor.FromArray(ids, [1, t])).ToArray<float>(); // (1, T, V)
            int v = model.Config.VocabSize;
            // Per-token NLL of ids[1..] computed in f64 from our f32 logits; 1e-4 relative as the issue states.
            var tokenNll = item.GetProperty("token_nll").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            Assert.Equal(t - 1, tokenNll.Length);
            double sum = 0;
            for (int p = 0; p < t - 1; p++)
            {
                double max = double.NegativeInfinity;
                for (int j = 0; j < v; j++) max = Math.Max(max, logits[p * v + j]);
                double z = 0;
                for (int j = 0; j < v; j++) z += Math.Exp(logits[p * v + j] - max);
                double nll = max + Math.Log(z) - logits[p * v + ids[p + 1]];
                sum += nll;
                Assert.True(Math.Abs(nll - tokenNll[p]) <= 1e-4 * Math.Abs(tokenNll[p]), $"token {p}: NLL {nll} vs {tokenNll[p]}");
            }
            double meanNll = item.GetProperty("mean_nll").GetDouble();
            Assert.True(Math.Abs(sum / (t - 1) - meanNll) <= 1e-4 * meanNll, $"mean NLL {sum / (t - 1)} vs {meanNll}");
            // Top-5 ids and values at the last position.
            var top = item.GetProperty("last_logits_top5");
            var topIds = top.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var topValues = top.GetProperty("values").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            var last = logits.AsSpan((t - 1) * v, v).ToArray();
            var ours = Enumerable.Range(0, v).OrderByDescending(j => last[j]).Take(5).ToArray();
            Assert.Equal(topIds, ours);
            for (int i = 0; i < 5; i++)
                Assert.True(Math.Abs(last[topIds[i]] - topValues[i]) <= 1e-4 * Math.Abs(topValues[i]), $"logit {topIds[i]}: {last[topIds[i]]} vs {topValues[i]}");
            double l2 = Math.Sqrt(last.Sum(x => (double)x * x));
            Assert.True(Math.Abs(l2 - item.GetProperty("last_logits_l2").GetDouble()) <= 1e-4 * l2);
        }
    }
}
