// `tinyllama bench train`: training throughput (forward + backward + AdamW) of a preset with random
// weights on random token batches; the median tokens/s over timed steps after warm-up steps. Each step
// ends by reading its loss, as the trainer does, so a GPU's asynchronous launches are inside the timing;
// on an ILGPU device the host reads per step are reported too (1 = that loss: no round trip inside).
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using TinyLlama.Backends.Cpu;
using TinyLlama.Autograd;
using TinyLlama.Backends.Ilgpu;
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Tensors;
using TinyLlama.Training.Lora;

namespace TinyLlama.Cli.Commands;

internal static class BenchTrainCommand
{
    public static Command Create()
    {
        var preset = new Option<string>("--preset") { Description = "Model shape with random weights (stories15M, stories110M, ...)", DefaultValueFactory = _ => "stories15M" };
        var batch = new Option<int>("--batch-size") { Description = "Sequences per step", DefaultValueFactory = _ => 4 }.Range(1, OptionRange.MaxCount);
        var seqLen = new Option<int>("--seq-len") { Description = "Tokens per sequence", DefaultValueFactory = _ => 256 }.Range(2, OptionRange.MaxCount);
        var loraRank = new Option<int>("--lora-rank") { Description = "Train rank-R LoRA adapters on q,k,v,o instead of all weights" }.Range(0, 1 << 16);
        var steps = new Option<int>("--steps") { Description = "Timed steps (the median is reported)", DefaultValueFactory = _ => 5 }.Range(1, BenchCommand.MaxRepeats);
        var warmup = new Option<int>("--warmup") { Description = "Untimed warm-up steps", DefaultValueFactory = _ => 1 }.Range(0, BenchCommand.MaxRepeats);
        var dtype = new Option<string>("--dtype") { Description = "f32, or bf16/f16 autocast", DefaultValueFactory = _ => "f32" };
        var json = new Option<bool>("--json") { Description = "Print {\"tokens_per_second\": x}" };
        var cmd = new Command("train", "Training tokens/s (forward + backward + AdamW).") { preset, batch, seqLen, loraRank, steps, warmup, dtype, json };
        cmd.SetAction(parse =>
        {
            int b = parse.GetValue(batch), t = parse.GetValue(seqLen), n = parse.GetValue(steps), w = parse.GetValue(warmup), r = parse.GetValue(loraRank);
            DType computeType;
            try { computeType = DTypes.Parse(parse.GetValue(dtype)!); }
            catch (ArgumentException e) { throw new CliException("--dtype: " + e.Message, isUsage: true); }
            var config = ModelCommands.Preset(parse.GetValue(preset)!);
            if (t > config.MaxPositionEmbeddings) throw new CliException($"--seq-len {t} exceeds the preset's context of {config.MaxPositionEmbeddings}", isUsage: true);
            if (r > config.HiddenSize) throw new CliException($"--lora-rank {r} is larger than the preset's hidden size {config.HiddenSize}", isUsage: true);
            // The logits and their gradient (B x T x V f32 each), a lower bound on what a step holds.
            OptionRange.CheckMemory($"--batch-size {b} x --seq-len {t}", 2.0 * b * t * config.VocabSize * sizeof(float), "lower --batch-size or --seq-len");
            var device = DeviceOption.Resolve(parse);
            var model = new LlamaForCausalLM(config, new Generator(0), DType.F32, device);
            if (r > 0) Lora.Apply(model, new LoraConfig(r, 2.0 * r, 0, ["q", "k", "v", "o"]), new Generator(1));
            var optimizer = new AdamW(model.Parameters().Where(p => p.RequiresGrad), 1e-4, weightDecay: 0);
            var gen = new Generator(2);
            var ids = new int[b * t];
            for (int i = 0; i < ids.Length; i++) ids[i] = gen.NextInt(config.VocabSize);
            var input = Tensor.FromArray(ids, [b, t]).Narrow(1, 0, t - 1).Contiguous();
            var targets = Tensor.FromArray(ids, [b, t]).Narrow(1, 1, t - 1).Contiguous();
            var rates = new double[n];
            var ilgpu = device.Backend as IlgpuBackend;
            long reads = 0;
            for (int s = -w; s < n; s++)
            {
                long t0 = Stopwatch.GetTimestamp();
                long readsBefore = ilgpu?.HostReads ?? 0;
                optimizer.ZeroGrad();
                Tensor loss;
                using (Autocast.Enable(computeType)) loss = Functional.CrossEntropy(model.Forward(input), targets);
                loss.Backward();
                optimizer.Step();
                loss.Item();                                   // the step's one read: waits for the device
                double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                if (s < 0) continue;
                rates[s] = input.Numel / seconds;
                reads = Math.Max(reads, (ilgpu?.HostReads ?? 0) - readsBefore);
            }
            Array.Sort(rates);
            double median = rates[n / 2];
            var output = parse.InvocationConfiguration.Output;
            if (parse.GetValue(json))
                output.WriteLine(ilgpu is null
                    ? JsonLine.Format(("tokens_per_second", Math.Round(median, 2)))
                    : JsonLine.Format(("tokens_per_second", Math.Round(median, 2)), ("host_reads_per_step", reads)));
            else output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{config.ParameterCount():N0} parameters ({(r > 0 ? $"LoRA rank {r}" : "full")}), batch {b} x {t - 1} tokens, {(ilgpu is null ? $"{CpuThreads.Count} threads" : device.ToString())}: {median:F1} tokens/s (median of {n}){(ilgpu is null ? "" : $", at most {reads} host read(s) per step")}"));
            return ExitCodes.Success;
        });
        return cmd;
    }
}
