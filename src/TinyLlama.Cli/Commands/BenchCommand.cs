// `tinyllama bench ...`: throughput measurements printed as a table or as JSON lines.
// Each figure is the median of several timed runs after a warm-up run.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using TinyLlama.Backends.Cpu;
using TinyLlama.Tensors;

namespace TinyLlama.Cli.Commands;

internal static class BenchCommand
{
    public static Command Create()
    {
        var bench = new Command("bench", "Measure the speed of kernels and models.");
        bench.Subcommands.Add(CreateGemm());
        bench.Subcommands.Add(BenchGenerateCommand.Create());
        bench.Subcommands.Add(BenchTrainCommand.Create());
        bench.Subcommands.Add(BenchQ4Command.Create());
        bench.Subcommands.Add(BenchServeCommand.Create());
        return bench;
    }

    private static Command CreateGemm()
    {
        var sizes = new Option<string?>("--sizes") { Description = "Comma-separated square sizes n (runs n x n x n); default: 256,1024,2048 plus the LLaMA-shaped products 512x768x2048 and 512x2048x768" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object per size: {\"m\": M, \"n\": N, \"k\": K, \"gflops\": x}" };
        var repeats = new Option<int>("--repeats") { Description = "Timed runs per size (the median is reported)", DefaultValueFactory = _ => 5 }.Range(1, MaxRepeats);
        var dtype = new Option<string>("--dtype") { Description = "Input dtype: f32, f16 or bf16 (f16/bf16 accumulate in f32)", DefaultValueFactory = _ => "f32" };
        var cmd = new Command("gemm", "GFLOP/s of the CPU matrix multiply (C = A @ B).") { sizes, json, repeats, dtype };
        cmd.SetAction(parse =>
        {
            var shapes = ParseShapes(parse.GetValue(sizes));
            int reps = parse.GetValue(repeats);
            DType dt;
            try { dt = DTypes.Parse(parse.GetValue(dtype)!); }
            catch (ArgumentException e) { throw new CliException("--dtype: " + e.Message, isUsage: true); }
            if (dt is not (DType.F32 or DType.F16 or DType.BF16)) throw new CliException("--dtype must be f32, f16 or bf16", isUsage: true);
            var output = parse.InvocationConfiguration.Output;
            bool asJson = parse.GetValue(json);
            if (!asJson) output.WriteLine($"{"M",6} {"N",6} {"K",6} {"median ms",10} {"GFLOP/s",9}   ({dt.Name()}, {CpuThreads.Count} threads)");
            foreach (var (m, n, k) in shapes)
                OptionRange.CheckMemory($"--sizes {n}", ((double)m * k + (double)k * n) * dt.SizeOf() + (double)m * n * sizeof(float), "give smaller --sizes");
            var device = DeviceOption.Resolve(parse);
            foreach (var (m, n, k) in shapes)
            {
                double seconds = MedianSeconds(m, n, k, dt, reps, device);
                double gflops = 2.0 * m * n * k / seconds / 1e9;
                if (asJson)
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{{\"m\": {m}, \"n\": {n}, \"k\": {k}, \"gflops\": {gflops:F2}}}"));
                else
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{m,6} {n,6} {k,6} {seconds * 1e3,10:F3} {gflops,9:F1}"));
            }
            return ExitCodes.Success;
        });
        return cmd;
    }

    /// <summary>The most timed runs a bench verb takes (--repeats, -r): far more than a median needs.</summary>
    internal const int MaxRepeats = 10_000;

    private static List<(int M, int N, int K)> ParseShapes(string? text)
    {
        if (text is null) // an empty --sizes or --shapes is an error below, not the long default sweep
            return [(256, 256, 256), (1024, 1024, 1024), (2048, 2048, 2048), (512, 2048, 768), (512, 768, 2048)];
        var result = new List<(int, int, int)>();
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (!int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 1 || n > 16384)
                throw new CliException($"--sizes: '{part}' is not a size between 1 and 16384", isUsage: true);
            result.Add((n, n, n));
        }
        if (result.Count == 0) throw new CliException("--sizes: no sizes given", isUsage: true);
        return result;
    }

    /// <summary>Median wall time of C = A @ B over reps runs, after one warm-up run.</summary>
    internal static double MedianSeconds(int m, int n, int k, DType dtype, int reps, Device? device = null)
    {
        var gen = new Generator(42);
        var dev = device ?? Device.Cpu;
        var a = Tensor.RandN([m, k], gen, dtype, dev);
        var b = Tensor.RandN([k, n], gen, dtype, dev);
        var c = Tensor.Zeros([m, n], DType.F32, dev);
        var backend = a.Backend;
        backend.MatMul(a, b, c);
        var times = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            long t0 = Stopwatch.GetTimestamp();
            backend.MatMul(a, b, c);
            // GPU launches are asynchronous: reading one element waits for the product to finish.
            if (dev != Device.Cpu) c.Narrow(0, 0, 1).Narrow(1, 0, 1).ToArray<float>();
            times[i] = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        }
        Array.Sort(times);
        return times[reps / 2];
    }
}
