// `tinyllama check --device D`: every op of D's backend against the CPU backend (Backends/BackendCheck.cs),
// then a small LLaMA end to end: three training steps (forward, cross-entropy, backward, gradient clipping,
// AdamW) must give the CPU's losses within 1e-4, and greedy generation the CPU's ids exactly. One line per
// case; exit code 1 if any case fails. Needs no .NET SDK, so it is how a published build checks a GPU.
using System.CommandLine;
using System.Globalization;
using TinyLlama.Autograd;
using TinyLlama.Backends;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Tensors;

namespace TinyLlama.Cli.Commands;

internal static class CheckCommand
{
    public static Command Create()
    {
        var filter = new Option<string?>("--filter") { Description = "Run only the cases whose name contains this text" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object per case: {\"case\": ..., \"worst_ratio\": x, \"passed\": b}" };
        var cmd = new Command("check", "Check every op of a device's backend (and a small model end to end) against the CPU backend.") { filter, json };
        cmd.SetAction(parse =>
        {
            var device = DeviceOption.Resolve(parse, fallBack: false); // a missing GPU leaves nothing to check
            string? only = parse.GetValue(filter);
            var cases = BackendCheck.OpCases().Concat(ModelCases())
                .Where(c => only is null || c.Name.Contains(only, StringComparison.OrdinalIgnoreCase)).ToList();
            if (cases.Count == 0) throw new CliException($"--filter: no case name contains '{only}'", isUsage: true);
            var output = parse.InvocationConfiguration.Output;
            bool asJson = parse.GetValue(json);
            if (!asJson) output.WriteLine($"# {device} against cpu: worst error / allowance per case (pass <= 1)");
            int failed = 0;
            foreach (var c in cases)
            {
                var r = BackendCheck.Run(c, device);
                if (!r.Passed) failed++;
                if (asJson)
                    output.WriteLine(JsonLine.Format(("case", r.Name), ("worst_ratio", double.IsFinite(r.WorstRatio) ? Math.Round(r.WorstRatio, 4) : null), ("passed", r.Passed), ("error", r.Error)));
                else
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{(r.Passed ? "ok  " : "FAIL")} {r.Name,-66} {(r.Error ?? r.WorstRatio.ToString("F3", CultureInfo.InvariantCulture))}"));
            }
            if (!asJson) output.WriteLine($"# {cases.Count - failed} of {cases.Count} cases passed on {device}");
            return failed == 0 ? ExitCodes.Success : ExitCodes.Failure;
        });
        return cmd;
    }

    /// <summary>A 2-layer LLaMA (vocab 29, C 16, GQA 4/2 heads) built in place: training losses and greedy ids.</summary>
    internal static IEnumerable<BackendCheck.Case> ModelCases()
    {
        var config = new LlamaConfig
        {
            VocabSize = 29, HiddenSize = 16, IntermediateSize = 20, NumHiddenLayers = 2,
            NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 4, MaxPositionEmbeddings = 32,
            RmsNormEps = 1e-5, RopeTheta = 10000,
        };
        // Losses of the same f32 computation summed in another order: 5e-5 (|loss| + rms) is about 1e-4 of a loss.
        yield return new BackendCheck.Case("llama: 3 training steps (forward, backward, clip, AdamW) losses", dev =>
        {
            var ids = Tensor.FromArray(new[] { 1, 4, 7, 2, 9, 3, 8, 5, 11, 2, 6, 1 }, [2, 6], dev);
            var targets = Tensor.FromArray(new[] { 4, 7, 2, 9, 3, -100, 5, 11, 2, 6, 1, 4 }, [2, 6], dev);
            var model = new LlamaForCausalLM(config, new Generator(7), DType.F32, dev);
            var opt = new AdamW(model.Parameters(), 1e-2, weightDecay: 0.01);
            var losses = new float[3];
            for (int s = 0; s < 3; s++)
            {
                opt.ZeroGrad();
                var loss = Functional.CrossEntropy(model.Forward(ids), targets);
                loss.Backward();
                GradClip.ClipGradNormOnDevice(model.Parameters(), 1.0);
                opt.Step();
                losses[s] = (float)loss.Item();
            }
            return [Tensor.FromArray(losses)];
        }, F32Tolerance: 5e-5);
        yield return new BackendCheck.Case("llama: greedy generation ids (12 tokens)", dev =>
        {
            var model = new LlamaForCausalLM(config, new Generator(8), DType.F32, dev);
            // Larger weights than the default init, so the argmax is decisive rather than a near-tie.
            using (GradMode.NoGrad())
                foreach (var p in model.Parameters()) p.CopyFrom_(Tensor.RandN(p.Shape, new Generator(9), DType.F32, null, 0, 0.3));
            return [Tensor.FromArray(TextGenerator.Generate(model, [1, 5, 9], 12, SamplingOptions.Greedy).ToArray())];
        });
    }
}
