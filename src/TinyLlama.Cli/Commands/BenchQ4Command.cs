// `tinyllama bench q4`: the int4 product y = x @ dequantize(w)^T with Q4_0 weights (IBackend.MatMulQuantized)
// against the f32 product of the same shape and layout (x @ W^T, W [N, K] read in place), timed in the same
// process, alternating the two so that drift hits both. Reported per shape: the medians, the weights'
// bytes per second (w is what a mat-vec streams: 0.5625 bytes per weight for Q4_0, 4 for f32), GFLOP/s,
// and the speed-up. Shapes are M x N x K: M = 1 is decoding one token, larger M a prefill. On the CPU the Q4_0
// product quantizes x to Q8_0 and runs the integer kernels over repacked rows (as generation does) unless the
// global --f32-activations is given.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using TinyLlama.Backends.Cpu;
using TinyLlama.Generation;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Cli.Commands;

internal static class BenchQ4Command
{
    public static Command Create()
    {
        var shapes = new Option<string?>("--shapes") { Description = "Comma-separated MxNxK products; default: 1x768x768,1x2048x768,1x4096x4096,1x11008x4096,64x4096x4096" };
        var repeats = new Option<int>("--repeats") { Description = "Timed runs per shape and path (medians are reported)", DefaultValueFactory = _ => 9 }.Range(1, BenchCommand.MaxRepeats);
        var json = new Option<bool>("--json") { Description = "Print one JSON object per shape" };
        var cmd = new Command("q4", "Int4 (Q4_0) product against f32 at the same shape.") { shapes, repeats, json };
        cmd.SetAction(parse =>
        {
            var list = ParseShapes(parse.GetValue(shapes));
            int reps = parse.GetValue(repeats);
            // A, C and B in f32 and in Q4_0 (18 bytes a block of 32) are alive together.
            foreach (var (m, n, k) in list)
                OptionRange.CheckMemory($"--shapes {m}x{n}x{k}", 4.0 * ((double)m * k + (double)m * n + (double)k * n) + (double)n * (k / 32) * 18, "give smaller --shapes");
            var device = DeviceOption.Resolve(parse);
            var output = parse.InvocationConfiguration.Output;
            bool asJson = parse.GetValue(json);
            if (!asJson)
                output.WriteLine($"{"M",5} {"N",6} {"K",6} {"f32 ms",9} {"q4 ms",9} {"f32 GB/s",9} {"q4 GB/s",8} {"q4 GFLOP/s",10} {"q4/f32",7}   ({device}, {CpuThreads.Count} threads, medians of {reps})");
            foreach (var (m, n, k) in list)
            {
                var (f32, q4) = Measure(m, n, k, reps, device);
                double f32Bytes = 4.0 * n * k, q4Bytes = n * (double)(k / 32 * 18);
                double speedup = f32 / q4;
                if (asJson)
                    output.WriteLine(JsonLine.Format(("m", m), ("n", n), ("k", k), ("f32_ms", Math.Round(f32 * 1e3, 4)), ("q4_ms", Math.Round(q4 * 1e3, 4)),
                                                     ("q4_gflops", Math.Round(2.0 * m * n * k / q4 / 1e9, 2)), ("speedup", Math.Round(speedup, 3))));
                else
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{m,5} {n,6} {k,6} {f32 * 1e3,9:F3} {q4 * 1e3,9:F3} {f32Bytes / f32 / 1e9,9:F1} {q4Bytes / q4 / 1e9,8:F1} {2.0 * m * n * k / q4 / 1e9,10:F1} {speedup,7:F2}"));
            }
            return ExitCodes.Success;
        });
        return cmd;
    }

    private static List<(int M, int N, int K)> ParseShapes(string? text)
    {
        if (text is null) // an empty --sizes or --shapes is an error below, not the long default sweep
            return [(1, 768, 768), (1, 2048, 768), (1, 4096, 4096), (1, 11008, 4096), (64, 4096, 4096)];
        var result = new List<(int, int, int)>();
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var dims = part.Split('x');
            if (dims.Length != 3 || !dims.All(d => int.TryParse(d, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v >= 1 && v <= 65536))
                throw new CliException($"--shapes: '{part}' is not MxNxK with sizes between 1 and 65536", isUsage: true);
            int k = int.Parse(dims[2], CultureInfo.InvariantCulture);
            if (k % 32 != 0) throw new CliException($"--shapes: K = {k} in '{part}' is not a multiple of the Q4_0 block size 32", isUsage: true);
            result.Add((int.Parse(dims[0], CultureInfo.InvariantCulture), int.Parse(dims[1], CultureInfo.InvariantCulture), k));
        }
        if (result.Count == 0) throw new CliException("--shapes: no shapes given", isUsage: true);
        return result;
    }

    /// <summary>Median seconds of the f32 product x @ W^T and of the Q4_0 product, alternated, after a warm-up of each.</summary>
    internal static (double F32, double Q4) Measure(int m, int n, int k, int reps, Device device)
    {
        var gen = new Generator(42);
        var w = Tensor.RandN([n, k], gen, DType.F32, device);
        var q = Quantize.Q4_0(w);
        var x = Tensor.RandN([m, k], gen, DType.F32, device);
        var y = Tensor.Zeros([m, n], DType.F32, device);
        var backend = x.Backend;
        var wt = w.MT;                                              // W^T [K, N], a view
        void RunF32() => backend.MatMul(x, wt, y);
        bool integer = CpuDecoder.DefaultActivations == DecoderActivations.Quantized;  // --f32-activations turns it off
        void RunQ4()
        {
            using var scope = CpuBackend.UseIntegerActivations(integer);
            backend.MatMulQuantized(x, q, y);
        }
        RunF32();
        RunQ4();
        var f32 = new double[reps];
        var q4 = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            f32[i] = Time(RunF32, y, device);
            q4[i] = Time(RunQ4, y, device);
        }
        Array.Sort(f32);
        Array.Sort(q4);
        return (f32[reps / 2], q4[reps / 2]);
    }

    private static double Time(Action run, Tensor y, Device device)
    {
        long t0 = Stopwatch.GetTimestamp();
        run();
        // Device launches are asynchronous: reading one element waits for the product.
        if (device != Device.Cpu) y.Narrow(0, 0, 1).Narrow(1, 0, 1).ToArray<float>();
        return Stopwatch.GetElapsedTime(t0).TotalSeconds;
    }
}
