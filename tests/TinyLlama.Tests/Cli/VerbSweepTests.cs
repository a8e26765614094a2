// Issue 13's numeric-option and device classes, swept over every verb. Each numeric option of every verb but
// sft (SftReliabilityTests sweeps sft's) gets 0, -1, NaN, huge values and words: outside the option's range
// it is a usage error at parse time (exit 2, one line naming the option and the range), and a value that does
// not parse is System.CommandLine's one-line error naming the option; inside the range the verb goes on (here
// to a model or preset that does not exist: one line, no stack trace). Sizes that fit the range but not the
// memory are refused with the estimate. Then every verb with a malformed --device (exit 2, one line) and with a
// well-formed device this machine lacks (cuda, opencl:3: the verb runs on the CPU after one warning line, or,
// for `check`, which needs the device, fails with that line).
using TinyLlama.Tests.Formats;

namespace TinyLlama.Tests.Cli;

public class VerbSweepTests
{
    private const int MaxCount = 1 << 20;

    // Command line with {v} where the value goes, the option as the error names it, and its range
    // (min, max, whether min is excluded, whether only integers parse).
    public static TheoryData<string, string, double, double, bool, bool> NumericOptions() => new()
    {
        { "generate --model m --prompt-ids 1 --max-tokens {v}", "--max-tokens", 0, MaxCount, false, true },
        { "generate --model m --prompt-ids 1 --max-tokens 1 --temperature {v}", "--temperature", 0, 1000, false, false },
        { "generate --model m --prompt-ids 1 --max-tokens 1 --top-k {v}", "--top-k", 0, MaxCount, false, true },
        { "generate --model m --prompt-ids 1 --max-tokens 1 --top-p {v}", "--top-p", 0, 1, true, false },
        { "generate --model m --prompt-ids 1 --max-tokens 1 --repetition-penalty {v}", "--repetition-penalty", 0, 1000, true, false },
        { "chat --model m --max-tokens {v}", "--max-tokens", 1, MaxCount, false, true },
        { "chat --model m --ctx-size {v}", "--ctx-size", 0, MaxCount, false, true },
        { "chat --model m --top-p {v}", "--top-p", 0, 1, true, false },
        { "bench gemm --sizes 8 --repeats {v}", "--repeats", 1, 10_000, false, true },
        { "bench gemm --sizes {v}", "--sizes", 1, 16384, false, true },
        { "bench q4 --shapes 1x32x32 --repeats {v}", "--repeats", 1, 10_000, false, true },
        { "bench q4 --shapes {v}x32x32", "--shapes", 1, 65536, false, true },
        { "bench generate --preset nope -p {v}", "--prompt-tokens", 1, MaxCount, false, true },
        { "bench generate --preset nope -n {v}", "--tokens", 1, MaxCount, false, true },
        { "bench generate --preset nope -r {v}", "--repeats", 1, 10_000, false, true },
        { "bench train --preset nope --batch-size {v}", "--batch-size", 1, MaxCount, false, true },
        { "bench train --preset nope --seq-len {v}", "--seq-len", 2, MaxCount, false, true },
        { "bench train --preset nope --lora-rank {v}", "--lora-rank", 0, 1 << 16, false, true },
        { "bench train --preset nope --steps {v}", "--steps", 1, 10_000, false, true },
        { "bench train --preset nope --warmup {v}", "--warmup", 0, 10_000, false, true },
        { "quantize --model m --out o.gguf --type q8_0 --calib-samples {v}", "--calib-samples", 1, MaxCount, false, true },
        { "quantize --model m --out o.gguf --type q8_0 --calib-length {v}", "--calib-length", 0, MaxCount, false, true },
        { "demo --quantize-base nope --eval-every {v}", "--eval-every", 0, MaxCount, false, true },
        { "self-instruct --model m --seed-tasks s --out o --count {v}", "--count", 1, MaxCount, false, true },
        { "self-instruct --model m --seed-tasks s --out o --count 1 --max-attempts {v}", "--max-attempts", 0, MaxCount, false, true },
        { "self-instruct --model m --seed-tasks s --out o --count 1 --examples {v}", "--examples", 1, 64, false, true },
        { "self-instruct --model m --seed-tasks s --out o --count 1 --max-tokens {v}", "--max-tokens", 1, MaxCount, false, true },
        { "self-instruct --model m --seed-tasks s --out o --count 1 --temperature {v}", "--temperature", 0, 1000, false, false },
        { "self-instruct --model m --seed-tasks s --out o --count 1 --top-p {v}", "--top-p", 0, 1, true, false },
        { "self-instruct --model m --seed-tasks s --out o --count 1 --min-words {v}", "--min-words", 0, MaxCount, false, true },
        { "self-instruct --model m --seed-tasks s --out o --count 1 --min-words 0 --max-words {v}", "--max-words", 1, MaxCount, false, true },
        { "self-instruct --model m --seed-tasks s --out o --count 1 --rouge-threshold {v}", "--rouge-threshold", 0, 1, true, false },
        { "info --model m --threads {v}", "--threads", 1, TinyLlama.Backends.Cpu.CpuThreads.Max, false, true },
    };

    private static readonly string[] Values = ["0", "-1", "NaN", "Infinity", "1e30", "2147483647", "99999999999", "0.5", "abc", ""];

    [Theory]
    [MemberData(nameof(NumericOptions))]
    public void EveryValueIsOneLineAndOutOfRangeIsAUsageErrorNamingTheOption(string template, string option, double min, double max, bool minOpen, bool integer)
    {
        foreach (var value in Values)
        {
            var args = template.Split(' ').Select(a => a == "{v}" ? value : a).ToArray();
            var (code, _, err) = CliRunner.Run(args);
            bool parses = double.TryParse(value, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double x)
                && (!integer || (x == Math.Floor(x) && Math.Abs(x) <= int.MaxValue));
            bool inRange = parses && double.IsFinite(x) && (minOpen ? x > min : x >= min) && x <= max;
            string context = $"{string.Join(' ', args)}: exit {code}: {err}";
            string line = CliRunner.AssertOneLineError(inRange ? code : 2, code, err);
            if (inRange)
            {
                Assert.True(code is 1 or 2, context);
                Assert.DoesNotContain($"{option} must", line);
                Assert.DoesNotContain($"{option} (", line);
            }
            else
            {
                Assert.True(line.Contains(option, StringComparison.Ordinal), context);
            }
        }
    }

    [Fact]
    public void SizesInRangeThatCannotFitInMemoryNameTheEstimate()
    {
        // The logits and their gradient for 2^20 sequences of 256 tokens over a 32,000-token vocabulary: 68,719.5 GB.
        var (code, _, err) = CliRunner.Run("bench", "train", "--preset", "stories110M", "--batch-size", $"{MaxCount}", "--seq-len", "256");
        string line = CliRunner.AssertOneLineError(2, code, err);
        Assert.Contains($"--batch-size {MaxCount} x --seq-len 256 needs 68719.5 GB or more, over the ", line);

        // The estimate a KV cache gets (chat --ctx-size, generate --max-tokens): 2 (k, v) x layers x tokens x kv heads x head dim x 4 bytes.
        var config = TinyLlama.Model.LlamaConfig.Preset("stories110M"); // 12 layers, 12 heads of 64
        var e = Assert.Throws<TinyLlama.Cli.CliException>(() => TinyLlama.Cli.Commands.ModelCommands.CheckCacheMemory(config, 1L << 40, "--ctx-size N", "lower --ctx-size"));
        Assert.True(e.IsUsage);
        double expected = 2.0 * 12 * (1L << 40) * 12 * 64 * 4 / 1e9;
        Assert.StartsWith(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"--ctx-size N (a KV cache of {1L << 40:N0} tokens) needs {expected:F1} GB or more"), e.Message);
        TinyLlama.Cli.Commands.ModelCommands.CheckCacheMemory(config, 1024, "--ctx-size 1024", "lower --ctx-size"); // 75 MB: fits
    }

    // ---------------- --device on every verb ----------------

    // Every verb, each with arguments that succeed on the CPU ({model}, {data}, {jsonl}, {out} filled in).
    public static TheoryData<string> Verbs() => new()
    {
        "info --model {model}",
        "tokenize --tokenizer {model} --jsonl {jsonl}",
        "generate --model {model} --prompt-ids 1,2 --max-tokens 2 --json",
        "perplexity --model {model} --text hello",
        "chat --model {model} --max-tokens 2",
        "quantize --model {model} --out {out}.gguf --type q8_0",
        "sft --model {model} --data {data} --format alpaca --out {out} --steps 1 --batch-size 2 --lr 1e-3",
        "self-instruct --model {model} --seed-tasks {data} --out {out}.jsonl --count 1 --max-attempts 1 --max-tokens 2",
        "bench gemm --sizes 8 --repeats 1",
        "bench q4 --shapes 1x32x32 --repeats 1",
        "bench generate --model {model} -p 2 -n 2 -r 1",
        "bench train --preset stories15M --batch-size 1 --seq-len 2 --steps 1 --warmup 0",
        "check --filter add",
        "demo --quantize-base nope", // the demo takes minutes: only its parse-time checks run here
    };

    [Theory]
    [MemberData(nameof(Verbs))]
    public void EveryVerbRefusesAMalformedDeviceAndRunsOnTheCpuWithoutAMissingOne(string template)
    {
        using var dir = new TempDir();
        var (model, data) = SftReliabilityTests.WriteModelAndData(dir);
        string jsonl = dir.File("in.jsonl");
        File.WriteAllText(jsonl, "{\"text\": \"Say hi.\"}\n");
        string[] Args(string device) =>
            [.. template.Replace("{model}", model).Replace("{data}", data).Replace("{jsonl}", jsonl).Replace("{out}", dir.File("out")).Split(' '), "--device", device];

        foreach (var device in new[] { "bogus", "cuda:x", "cuda:-1", "opencl:1:2", "", "CPU0" })
        {
            var (code, _, err) = CliRunner.RunWithInput("hi\n", Args(device));
            Assert.Contains("--device", CliRunner.AssertOneLineError(2, code, err));
        }

        bool demo = template.StartsWith("demo", StringComparison.Ordinal), check = template.StartsWith("check", StringComparison.Ordinal);
        foreach (var device in new[] { "cuda", "opencl:3" })
        {
            if (Available(device)) continue; // this sweep is about a device the machine lacks
            var (code, _, err) = CliRunner.RunWithInput("hi\n", Args(device));
            var lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            string context = $"{template} --device {device}: exit {code}: {err}";
            if (demo) Assert.Contains("--quantize-base", CliRunner.AssertOneLineError(2, code, err));
            else if (check) Assert.Contains($"--device {device}: no ", CliRunner.AssertOneLineError(1, code, err));
            else
            {
                Assert.True(code == 0, context);
                // At most the warning (tokenize, info and quantize compute on the CPU only; quantize's progress lines are its own).
                var reports = lines.Where(l => l.StartsWith("tinyllama:", StringComparison.Ordinal)).ToList();
                Assert.True(reports.Count <= 1, context);
                if (reports.Count == 1) Assert.Matches(@"^tinyllama: warning: no (CUDA|OpenCL) device.*; falling back to --device cpu$", reports[0]);
                Assert.DoesNotContain(lines, l => l.TrimStart().StartsWith("at ", StringComparison.Ordinal));
            }
        }
    }

    private static bool Available(string device)
    {
        try
        {
            TinyLlama.Backends.Ilgpu.IlgpuDevices.Resolve(device);
            return true;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }
}
