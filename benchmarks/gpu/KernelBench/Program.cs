// KernelBench: checks, then times, the ILGPU GEMM, FlashAttention, fused LoRA and int4 (Q4_0) kernels (kernels/TinyLlama.Kernels)
// on a CUDA accelerator, and prints a table of median time, achieved TFLOP/s, the fraction of the device's
// peak, and the ratio to PyTorch (cuBLAS matmul, scaled_dot_product_attention) read from the JSON file
// benchmarks/gpu/torch_reference.py writes for the same shapes. benchmarks/gpu/run.sh drives it.
//
//   KernelBench --device cuda [--gpu h100-sxm|h100-pcie|h200] [--peak-f32 T] [--peak-f16 T]
//               [--torch torch_reference.json] [--json results.json] [--warmup 3] [--iters 20] [--self-check-only]
//   KernelBench --device ilgpu-cpu --quick     (plumbing check without a GPU: self-check and a tiny table)
//
// Every run starts with a self-check of each kernel version against the CPU references (GemmKernels.Reference
// in f64, AttentionRef in f64) at small odd shapes; on CUDA this is the only place the tensor-core kernel's
// inline PTX (mma.sync) is checked, since the CPU accelerator runs its emulation. Exit code 1 if it fails.
//
// Napkin math (FLOPs counted as the repository's CPU benchmarks do):
//   GEMM              2 M N K                          (4096^3: 137 GFLOP)
//   attention fwd     4 D per visible (query, key) pair: q.k and p v          (causal S = T: pairs = T (T + 1) / 2)
//   attention bwd     10 D per visible pair: q.k, dO.v, p dO, ds k, ds q       (B 4, H 16, T 2048, causal: 172 GFLOP)
//   int4 (Q4_0)       2 M N K; GB/s counts w (18 bytes per 32 weights), x and y once each: the mat-vec's floor
// Peaks are dense (no sparsity) datasheet numbers: f32 on CUDA cores for the f32 kernels, f16/bf16 tensor
// cores for the 16-bit GEMMs; the f32 attention kernels are compared with the f32 peak.
using System.Globalization;
using System.Text;
using System.Text.Json;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using TinyLlama.Kernels;
using TinyLlama.Ops.Reference;

namespace TinyLlama.KernelBench;

/// <summary>Command-line options.</summary>
internal sealed record Options(string Device, bool Quick, bool SelfCheckOnly, string? Gpu, double? PeakF32, double? PeakF16,
                               string? TorchJson, string? JsonOut, int Warmup, int Iters)
{
    public static Options Parse(string[] args)
    {
        string device = "cuda";
        bool quick = false, selfCheckOnly = false;
        string? gpu = null, torch = null, json = null;
        double? peakF32 = null, peakF16 = null;
        int warmup = 3, iters = 20;
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--device": device = Next(); break;
                case "--quick": quick = true; break;
                case "--self-check-only": selfCheckOnly = true; break;
                case "--gpu": gpu = Next(); break;
                case "--peak-f32": peakF32 = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--peak-f16": peakF16 = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--torch": torch = Next(); break;
                case "--json": json = Next(); break;
                case "--warmup": warmup = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--iters": iters = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"unknown option {args[i]}");
            }
        }
        if (device is not ("cuda" or "ilgpu-cpu")) throw new ArgumentException($"--device must be cuda or ilgpu-cpu, got {device}");
        if (quick)
        {
            warmup = Math.Min(warmup, 1);
            iters = Math.Min(iters, 3);
        }
        if (iters < 1 || warmup < 0) throw new ArgumentException("--iters must be >= 1 and --warmup >= 0");
        return new Options(device, quick, selfCheckOnly, gpu, peakF32, peakF16, torch, json, warmup, iters);
    }
}

/// <summary>One timed kernel: key matches torch_reference.py's entries.</summary>
internal sealed record Result(string Key, string Kernel, double Ms, double Flops, bool HalfPeak, double Bytes = 0);

internal static class Program
{
    private const string Usage =
        "usage: KernelBench [--device cuda|ilgpu-cpu] [--quick] [--self-check-only] [--gpu h100-sxm|h100-pcie|h200]\n" +
        "                   [--peak-f32 TFLOPS] [--peak-f16 TFLOPS] [--torch torch_reference.json] [--json out.json]\n" +
        "                   [--warmup N] [--iters N]";

    private static int Main(string[] args)
    {
        Options opt;
        try
        {
            opt = Options.Parse(args);
        }
        catch (Exception e) when (e is ArgumentException or FormatException)
        {
            Console.Error.WriteLine(e.Message);
            Console.Error.WriteLine(Usage);
            return 2;
        }

        using var context = opt.Device == "cuda"
            ? Context.Create(b => b.Cuda().Profiling().Optimize(OptimizationLevel.O2))
            : Context.Create(b => b.CPU(new CPUDevice(32, 8, 1)).Profiling());
        Accelerator accelerator;
        if (opt.Device == "cuda")
        {
            var devices = context.GetCudaDevices();
            if (devices.Count == 0)
            {
                Console.Error.WriteLine("no CUDA device found (run with --device ilgpu-cpu --quick to check the plumbing)");
                return 3;
            }
            accelerator = devices[0].CreateAccelerator(context);
        }
        else
        {
            accelerator = context.GetCPUDevice(0).CreateAccelerator(context);
        }
        using var acc = accelerator;
        Console.WriteLine($"# device: {acc.Name} ({acc.AcceleratorType}), warp {acc.WarpSize}, " +
                          $"{acc.MaxSharedMemoryPerGroup / 1024} KiB shared per group, tensor-core GEMM: {GemmKernels.IsTensorCoreDevice(acc)}");

        Console.WriteLine("# self-check against the CPU references");
        if (!SelfCheck.Run(acc))
        {
            Console.WriteLine("# SELF-CHECK FAILED: no timings");
            return 1;
        }
        if (opt.SelfCheckOnly) return 0;

        var (peakF32, peakF16, peakName) = Peaks.For(acc, opt);
        var torch = TorchReference.Load(opt.TorchJson);
        Console.WriteLine($"# timing: median of {opt.Iters} runs after {opt.Warmup} warm-up runs; peaks: {peakName}");
        var results = Bench.RunAll(acc, opt);
        Report.Print(results, peakF32, peakF16, torch);
        if (opt.JsonOut is not null) Report.WriteJson(opt.JsonOut, acc, results, peakF32, peakF16, torch);
        return 0;
    }
}

/// <summary>Dense datasheet peaks in TFLOP/s: (f32 CUDA cores, f16/bf16 tensor cores).</summary>
internal static class Peaks
{
    private static readonly Dictionary<string, (double F32, double F16)> Table = new()
    {
        ["h100-sxm"] = (67, 989),
        ["h100-pcie"] = (51, 756),
        ["h200"] = (67, 989),
    };

    public static (double? F32, double? F16, string Name) For(Accelerator acc, Options opt)
    {
        string? key = opt.Gpu;
        if (key is null && acc.AcceleratorType == AcceleratorType.Cuda)
        {
            string name = acc.Name.ToUpperInvariant();
            key = name.Contains("H200") ? "h200" : name.Contains("H100") ? (name.Contains("PCIE") ? "h100-pcie" : "h100-sxm") : null;
        }
        (double F32, double F16)? row = key is not null && Table.TryGetValue(key, out var r) ? r : null;
        double? f32 = opt.PeakF32 ?? row?.F32;
        double? f16 = opt.PeakF16 ?? row?.F16;
        string label = f32 is null && f16 is null ? "unknown (pass --gpu or --peak-f32/--peak-f16)" : $"{key ?? "given"}: f32 {f32} TFLOP/s, f16/bf16 tensor {f16} TFLOP/s";
        return (f32, f16, label);
    }
}

/// <summary>torch_reference.py's output: {"device": ..., "torch": ..., "results": [{"key": ..., "ms": ...}, ...]}.</summary>
internal sealed class TorchReference
{
    public string Device { get; private init; } = "";
    public Dictionary<string, double> Ms { get; } = [];

    public static TorchReference? Load(string? path)
    {
        if (path is null) return null;
        if (!File.Exists(path))
        {
            Console.WriteLine($"# no PyTorch reference at {path}: the vs-torch column stays empty");
            return null;
        }
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var root = doc.RootElement;
        var t = new TorchReference { Device = root.TryGetProperty("device", out var d) ? d.GetString() ?? "" : "" };
        foreach (var e in root.GetProperty("results").EnumerateArray())
            t.Ms[e.GetProperty("key").GetString()!] = e.GetProperty("ms").GetDouble();
        return t;
    }
}

/// <summary>The timed benchmarks.</summary>
internal static class Bench
{
    public static List<Result> RunAll(Accelerator acc, Options opt)
    {
        var results = new List<Result>();
        int[] sizes = opt.Quick ? [64] : [1024, 2048, 4096];
        foreach (int n in sizes)
        {
            results.Add(Gemm(acc, opt, n, GemmElementType.F32, GemmVersion.Tiled));
            if (n <= 2048) results.Add(Gemm(acc, opt, n, GemmElementType.F32, GemmVersion.Naive));
            results.Add(Gemm(acc, opt, n, GemmElementType.F16, GemmVersion.TensorCore));
            results.Add(Gemm(acc, opt, n, GemmElementType.F16, GemmVersion.Tiled));
            results.Add(Gemm(acc, opt, n, GemmElementType.BF16, GemmVersion.TensorCore));
        }
        (int B, int H, int T, bool Causal)[] shapes = opt.Quick
            ? [(1, 2, 64, true)]
            : [(1, 12, 512, true), (2, 16, 1024, true), (4, 16, 2048, true), (4, 16, 2048, false)];
        foreach (var (b, h, t, causal) in shapes)
            results.AddRange(Attention(acc, opt, b, h, t, 64, causal));
        // The fused LoRA linear's forward at the 110M config's projection (C = 768) on 8 x 512 tokens, rank
        // 16, against the plain tiled GEMM of the same x W^T: the difference is the cost of the adapter.
        var (lm, lc) = opt.Quick ? (64, 64) : (4096, 768);
        results.Add(Gemm(acc, opt, lm, lc, lc, GemmVersion.Tiled, "lora base"));
        results.Add(Lora(acc, opt, lm, lc, lc, 16));
        // Int4 (Q4_0) products at a 7B-class projection (K = N = 4096): the mat-vec of decoding one token,
        // bound by reading w (0.5625 bytes per weight), and a 512-token prefill through the tiled kernel.
        int qk = opt.Quick ? 64 : 4096;
        results.Add(Q4(acc, opt, 1, qk, qk, Q4Version.MatVec));
        results.Add(Q4(acc, opt, opt.Quick ? 5 : 512, qk, qk, Q4Version.Tiled));
        return results;
    }

    /// <summary>y [m, n] = x [m, k] @ dequantize(w)^T with random Q4_0 weights through MatMulQ4Kernels.</summary>
    private static Result Q4(Accelerator acc, Options opt, int m, int n, int k, Q4Version version)
    {
        var rng = new Random(m + n + k);
        var weights = TinyLlama.Tensors.Tensor.FromArray(RandomFloats(rng, n * k), [n, k]);
        var bytes = TinyLlama.Quantization.Quantize.Q4_0(weights).ToArray<byte>();
        var words = new ushort[bytes.Length / 2];
        Buffer.BlockCopy(bytes, 0, words, 0, bytes.Length);
        using var x = acc.Allocate1D(RandomFloats(rng, m * k));
        using var w = acc.Allocate1D(words);
        using var y = acc.Allocate1D<float>(m * n);
        var args = new MatMulQ4Args(new Q4Shape { M = m, N = n, K = k }, x.View, w.View, y.View);
        double ms = TimeMs(acc, () => MatMulQ4Kernels.Launch(acc, acc.DefaultStream, in args, version), opt.Warmup, opt.Iters);
        double traffic = bytes.Length + 4.0 * m * k + 4.0 * m * n;   // w, x and y once each (the mat-vec's floor)
        return new Result($"q4 {(m <= MatMulQ4Kernels.MatVecMaxRows ? "matvec" : "matmul")} {m}x{n}x{k}", $"v{(int)version} {version}", ms, 2.0 * m * n * k, false, traffic);
    }

    /// <summary>y [m, n] = x [m, k] W^T + s (u [m, r]) B^T through LoraLinearKernels version 2 (f32).</summary>
    private static Result Lora(Accelerator acc, Options opt, int m, int n, int k, int r)
    {
        var rng = new Random(m + r);
        using var x = acc.Allocate1D(RandomFloats(rng, m * k));
        using var w = acc.Allocate1D(RandomFloats(rng, n * k));
        using var u = acc.Allocate1D(RandomFloats(rng, m * r));
        using var bl = acc.Allocate1D(RandomFloats(rng, n * r));
        using var y = acc.Allocate1D<float>(m * n);
        var shape = new LoraShape
        {
            M = m, N = n, K = k, R = r,
            ARowStride = k, AColStride = 1, BRowStride = 1, BColStride = k,   // W^T
            URowStride = r, UColStride = 1, VRowStride = 1, VColStride = r,   // B^T
        };
        var args = new LoraLinearArgs(shape, 2f, x.View, w.View, u.View, bl.View, y.View, y.View);
        double ms = TimeMs(acc, () => LoraLinearKernels.Launch(acc, acc.DefaultStream, in args, LoraVersion.Tiled), opt.Warmup, opt.Iters);
        return new Result($"lora f32 {m}x{n}x{k} r{r}", "v2 Tiled (fused)", ms, 2.0 * m * n * (k + r), false);
    }

    /// <summary>Median time in ms of <paramref name="launch"/> between stream profiling markers.</summary>
    public static double TimeMs(Accelerator acc, Action launch, int warmup, int iters)
    {
        for (int i = 0; i < warmup; i++) launch();
        acc.Synchronize();
        var times = new double[iters];
        for (int i = 0; i < iters; i++)
        {
            using var start = acc.DefaultStream.AddProfilingMarker();
            launch();
            using var end = acc.DefaultStream.AddProfilingMarker();
            times[i] = (end - start).TotalMilliseconds;
        }
        Array.Sort(times);
        return iters % 2 == 1 ? times[iters / 2] : 0.5 * (times[iters / 2 - 1] + times[iters / 2]);
    }

    /// <summary>An f32 m x n x k product with b = W^T (the projection's layout), for the LoRA comparison.</summary>
    private static Result Gemm(Accelerator acc, Options opt, int m, int n, int k, GemmVersion version, string label)
    {
        var rng = new Random(m + n + k);
        using var a = acc.Allocate1D(RandomFloats(rng, m * k));
        using var b = acc.Allocate1D(RandomFloats(rng, n * k));
        using var c = acc.Allocate1D<float>(m * n);
        var args = new GemmArgs(m, n, k, GemmOperand.Float32(a.View, GemmLayout.RowMajor(m, k)), GemmOperand.Float32(b.View, new GemmLayout(0, 1, k)),
                                GemmOperand.Float32(c.View, GemmLayout.RowMajor(m, n)));
        double ms = TimeMs(acc, () => GemmKernels.Launch(acc, acc.DefaultStream, in args, version), opt.Warmup, opt.Iters);
        return new Result($"{label} f32 {m}x{n}x{k}", $"v{(int)version} {version}", ms, 2.0 * m * n * k, false);
    }

    private static Result Gemm(Accelerator acc, Options opt, int n, GemmElementType type, GemmVersion version)
    {
        var rng = new Random(n);
        int count = n * n;
        var layout = GemmLayout.RowMajor(n, n);
        GemmArgs args;
        var buffers = new List<IDisposable>();
        try
        {
            if (type == GemmElementType.F32)
            {
                var a = acc.Allocate1D(RandomFloats(rng, count));
                var b = acc.Allocate1D(RandomFloats(rng, count));
                var c = acc.Allocate1D<float>(count);
                buffers.AddRange([a, b, c]);
                args = new GemmArgs(n, n, n, GemmOperand.Float32(a.View, layout), GemmOperand.Float32(b.View, layout), GemmOperand.Float32(c.View, layout));
            }
            else
            {
                // 16-bit in, 16-bit out, as torch.matmul on f16/bf16 tensors does.
                var a = acc.Allocate1D(RandomBits(rng, count, type));
                var b = acc.Allocate1D(RandomBits(rng, count, type));
                var c = acc.Allocate1D<ushort>(count);
                buffers.AddRange([a, b, c]);
                args = new GemmArgs(n, n, n, GemmOperand.Bits16(a.View, type, layout), GemmOperand.Bits16(b.View, type, layout),
                                    GemmOperand.Bits16(c.View, type, layout));
            }
            double ms = TimeMs(acc, () => GemmKernels.Launch(acc, acc.DefaultStream, in args, version), opt.Warmup, opt.Iters);
            string name = type.ToString().ToLowerInvariant();
            return new Result($"gemm {name} {n}", $"v{(int)version} {version}", ms, 2.0 * n * n * n, type != GemmElementType.F32);
        }
        finally
        {
            foreach (var buffer in buffers) buffer.Dispose();
        }
    }

    private static IEnumerable<Result> Attention(Accelerator acc, Options opt, int b, int h, int t, int d, bool causal)
    {
        var args = new AttentionArgs(b, h, h, t, t, d, 1f / MathF.Sqrt(d), causal);
        var rng = new Random(t + h);
        int qn = b * h * t * d;
        using var q = acc.Allocate1D(RandomFloats(rng, qn));
        using var k = acc.Allocate1D(RandomFloats(rng, qn));
        using var v = acc.Allocate1D(RandomFloats(rng, qn));
        using var dO = acc.Allocate1D(RandomFloats(rng, qn));
        using var o = acc.Allocate1D<float>(qn);
        using var lse = acc.Allocate1D<float>(b * h * t);
        using var dq = acc.Allocate1D<float>(qn);
        using var dk = acc.Allocate1D<float>(qn);
        using var dv = acc.Allocate1D<float>(qn);
        using var delta = acc.Allocate1D<float>(FlashAttention.DeltaLength(args));
        double pairs = 0;
        for (int i = 0; i < t; i++) pairs += causal ? Math.Min(t, i + 1) : t;
        pairs *= (double)b * h;
        string shape = $"B={b} H={h} T={t} S={t} D={d}{(causal ? " causal" : "")}";
        double fwd = TimeMs(acc, () => FlashAttention.Forward(acc, acc.DefaultStream, in args, q.View, k.View, v.View, o.View, lse.View), opt.Warmup, opt.Iters);
        double bwd = TimeMs(acc, () => FlashAttention.Backward(acc, acc.DefaultStream, in args, q.View, k.View, v.View, o.View, lse.View,
                                                                dO.View, dq.View, dk.View, dv.View, delta.View), opt.Warmup, opt.Iters);
        return
        [
            new Result($"attention fwd f32 {shape}", "flash fwd", fwd, 4.0 * d * pairs, false),
            new Result($"attention bwd f32 {shape}", "flash bwd (3 kernels)", bwd, 10.0 * d * pairs, false),
        ];
    }

    public static float[] RandomFloats(Random rng, int n)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }

    public static ushort[] RandomBits(Random rng, int n, GemmElementType type)
    {
        var x = new ushort[n];
        for (int i = 0; i < n; i++) x[i] = ElementConvert.ToBits((float)(rng.NextDouble() * 2 - 1), type);
        return x;
    }
}

/// <summary>The table and the JSON file.</summary>
internal static class Report
{
    public static void Print(List<Result> results, double? peakF32, double? peakF16, TorchReference? torch)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"{"benchmark",-52} {"kernel",-22} {"ms",10} {"TFLOP/s",9} {"% peak",7} {"GB/s",8} {"torch ms",10} {"torch/ours",10}");
        foreach (var r in results)
        {
            double tflops = r.Flops / (r.Ms * 1e-3) / 1e12;
            double? peak = r.HalfPeak ? peakF16 : peakF32;
            string pct = peak is double p ? (100 * tflops / p).ToString("F1", CultureInfo.InvariantCulture) : "-";
            string tms = "-", ratio = "-";
            string gbs = r.Bytes > 0 ? (r.Bytes / (r.Ms * 1e-3) / 1e9).ToString("F1", CultureInfo.InvariantCulture) : "-";
            if (torch is not null && torch.Ms.TryGetValue(r.Key, out double t))
            {
                tms = t.ToString("F4", CultureInfo.InvariantCulture);
                ratio = (t / r.Ms).ToString("F3", CultureInfo.InvariantCulture);
            }
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"{r.Key,-52} {r.Kernel,-22} {r.Ms,10:F4} {tflops,9:F3} {pct,7} {gbs,8} {tms,10} {ratio,10}"));
        }
        if (torch is not null)
        {
            // PyTorch-only rows (e.g. bf16 flash attention) for context.
            foreach (var (key, ms) in torch.Ms.Where(kv => results.All(r => r.Key != kv.Key)).OrderBy(kv => kv.Key, StringComparer.Ordinal))
                sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"{key,-52} {"(torch only)",-22} {"-",10} {"-",9} {"-",7} {"-",8} {ms,10:F4} {"-",10}"));
            sb.AppendLine($"# torch reference device: {torch.Device}");
        }
        sb.AppendLine("# torch/ours > 1 means the ILGPU kernel is faster than PyTorch on that row.");
        Console.Write(sb.ToString());
    }

    public static void WriteJson(string path, Accelerator acc, List<Result> results, double? peakF32, double? peakF16, TorchReference? torch)
    {
        var rows = results.Select(r => new Dictionary<string, object?>
        {
            ["key"] = r.Key,
            ["kernel"] = r.Kernel,
            ["ms"] = r.Ms,
            ["tflops"] = r.Flops / (r.Ms * 1e-3) / 1e12,
            ["gbps"] = r.Bytes > 0 ? r.Bytes / (r.Ms * 1e-3) / 1e9 : null,
            ["torch_ms"] = torch is not null && torch.Ms.TryGetValue(r.Key, out double t) ? t : null,
        }).ToList();
        var doc = new Dictionary<string, object?>
        {
            ["device"] = acc.Name,
            ["peak_f32_tflops"] = peakF32,
            ["peak_f16_tflops"] = peakF16,
            ["results"] = rows,
        };
        File.WriteAllText(path, JsonSerializer.Serialize(doc, new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine($"# wrote {path}");
    }
}

/// <summary>Each kernel version against the CPU references at small odd shapes (see GemmKernelTests for the tolerances).</summary>
internal static class SelfCheck
{
    public static bool Run(Accelerator acc)
    {
        bool ok = true;
        ok &= Gemm(acc, 70, 65, 67, GemmVersion.Naive, GemmElementType.F32, transposeB: false);
        ok &= Gemm(acc, 70, 65, 67, GemmVersion.Tiled, GemmElementType.F32, transposeB: true);
        ok &= Gemm(acc, 70, 65, 67, GemmVersion.Tiled, GemmElementType.BF16, transposeB: false);
        ok &= Gemm(acc, 70, 65, 67, GemmVersion.TensorCore, GemmElementType.F16, transposeB: false);
        ok &= Gemm(acc, 70, 65, 67, GemmVersion.TensorCore, GemmElementType.F16, transposeB: true);
        ok &= Gemm(acc, 70, 65, 67, GemmVersion.TensorCore, GemmElementType.BF16, transposeB: true);
        ok &= Lora(acc, 130, 67, 37, 20);
        ok &= Q4(acc, 3, 67, 96, Q4Version.MatVec);
        ok &= Q4(acc, 130, 67, 96, Q4Version.Tiled);
        ok &= Attention(acc, 2, 4, 2, 33, 40, 64, true);
        ok &= Attention(acc, 1, 4, 1, 19, 21, 72, false);
        return ok;
    }

    // The tiled fused LoRA kernel against LoraLinearKernels.Reference (f64) at a shape crossing every tile edge.
    private static bool Lora(Accelerator acc, int m, int n, int k, int r)
    {
        var rng = new Random(m * r);
        double[] Doubles(int count) => Enumerable.Range(0, count).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
        double[] a = Doubles(m * k), b = Doubles(k * n), u = Doubles(m * r), v = Doubles(r * n);
        var shape = new LoraShape
        {
            M = m, N = n, K = k, R = r,
            ARowStride = k, AColStride = 1, BRowStride = n, BColStride = 1, URowStride = r, UColStride = 1, VRowStride = n, VColStride = 1,
        };
        var expected = new double[m * n];
        LoraLinearKernels.Reference(shape, 1.5, a, b, u, v, null, expected);
        float[] F(double[] d) => d.Select(x => (float)x).ToArray();
        using var aB = acc.Allocate1D(F(a));
        using var bB = acc.Allocate1D(F(b));
        using var uB = acc.Allocate1D(F(u));
        using var vB = acc.Allocate1D(F(v));
        using var c = acc.Allocate1D<float>(m * n);
        var args = new LoraLinearArgs(shape, 1.5f, aB.View, bB.View, uB.View, vB.View, c.View, c.View);
        LoraLinearKernels.Launch(acc, acc.DefaultStream, in args, LoraVersion.Tiled);
        acc.Synchronize();
        var got = c.GetAsArray1D();
        double maxErr = 0;
        for (int i = 0; i < got.Length; i++) maxErr = Math.Max(maxErr, Math.Abs(got[i] - expected[i]));
        // Products of values in [-1, 1], K + R = 57 terms (R scaled by 1.5): 1e-5 * (K + 1.5 R) bounds f32 accumulation.
        return Report($"lora Tiled f32 {m}x{n}x{k} r{r}", maxErr, 1e-5 * (k + 1.5 * r));
    }

    // An int4 kernel against MatMulQuantizedRef (f64) at a shape crossing the tile edges (Quantization/MatMulQuantizedTests.cs for the tolerance).
    private static bool Q4(Accelerator acc, int m, int n, int k, Q4Version version)
    {
        var rng = new Random(m * n + k);
        var x = Enumerable.Range(0, m * k).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
        var weights = TinyLlama.Tensors.Tensor.FromArray(Enumerable.Range(0, n * k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(), [n, k]);
        var bytes = TinyLlama.Quantization.Quantize.Q4_0(weights).ToArray<byte>();
        var expected = new double[m * n];
        MatMulQuantizedRef.Forward(TinyLlama.Quantization.QuantType.Q4_0, x, bytes, m, n, k, expected);
        var words = new ushort[bytes.Length / 2];
        Buffer.BlockCopy(bytes, 0, words, 0, bytes.Length);
        using var xB = acc.Allocate1D(x.Select(v => (float)v).ToArray());
        using var wB = acc.Allocate1D(words);
        using var y = acc.Allocate1D<float>(m * n);
        MatMulQ4Kernels.Launch(acc, acc.DefaultStream, new MatMulQ4Args(new Q4Shape { M = m, N = n, K = k }, xB.View, wB.View, y.View), version);
        acc.Synchronize();
        var got = y.GetAsArray1D();
        double maxErr = 0;
        for (int i = 0; i < got.Length; i++) maxErr = Math.Max(maxErr, Math.Abs(got[i] - expected[i]));
        // |x| <= 1 and |w| <= 1 (d = amax / 8): K terms of at most 1 bound f32 accumulation by 1e-5 K.
        return Report($"q4 {version} f32 {m}x{n}x{k}", maxErr, 1e-5 * k);
    }

    private static bool Report(string what, double maxErr, double tol)
    {
        bool pass = maxErr <= tol;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {(pass ? "ok  " : "FAIL")} {what,-60} max error {maxErr:E2} (tolerance {tol:E1})"));
        return pass;
    }

    private static bool Gemm(Accelerator acc, int m, int n, int k, GemmVersion version, GemmElementType type, bool transposeB)
    {
        var rng = new Random(m + n + k);
        var la = GemmLayout.RowMajor(m, k);
        var lb = transposeB ? new GemmLayout(0, 1, k) : GemmLayout.RowMajor(k, n);
        var lc = GemmLayout.RowMajor(m, n);
        var a = new double[m * k];
        var b = new double[k * n];
        var aBits = new ushort[a.Length];
        var bBits = new ushort[b.Length];
        var aF = new float[a.Length];
        var bF = new float[b.Length];
        for (int i = 0; i < a.Length; i++) Fill(rng, type, out a[i], out aF[i], out aBits[i]);
        for (int i = 0; i < b.Length; i++) Fill(rng, type, out b[i], out bF[i], out bBits[i]);
        var expected = new double[m * n];
        GemmKernels.Reference(m, n, k, 1, 1, a, la, b, lb, expected, lc, false);

        using var aB = acc.Allocate1D(aF);
        using var bB = acc.Allocate1D(bF);
        using var aH = acc.Allocate1D(aBits);
        using var bH = acc.Allocate1D(bBits);
        using var c = acc.Allocate1D<float>(m * n);
        var args = type == GemmElementType.F32
            ? new GemmArgs(m, n, k, GemmOperand.Float32(aB.View, la), GemmOperand.Float32(bB.View, lb), GemmOperand.Float32(c.View, lc))
            : new GemmArgs(m, n, k, GemmOperand.Bits16(aH.View, type, la), GemmOperand.Bits16(bH.View, type, lb), GemmOperand.Float32(c.View, lc));
        GemmKernels.Launch(acc, acc.DefaultStream, in args, version);
        acc.Synchronize();
        var got = c.GetAsArray1D();
        double maxErr = 0;
        for (int i = 0; i < got.Length; i++) maxErr = Math.Max(maxErr, Math.Abs(got[i] - expected[i]));
        // Products of +-1 values, K = 67 terms: 1e-5 * K bounds f32 accumulation error.
        return Report($"gemm {version} {type} {m}x{n}x{k}{(transposeB ? " b^T" : "")}", maxErr, 1e-5 * k);
    }

    private static void Fill(Random rng, GemmElementType type, out double value, out float f32, out ushort bits)
    {
        float x = (float)(rng.NextDouble() * 2 - 1);
        bits = type == GemmElementType.F32 ? (ushort)0 : ElementConvert.ToBits(x, type);
        f32 = type == GemmElementType.F32 ? x : ElementConvert.FromBits(bits, type);
        value = f32;
    }

    private static bool Attention(Accelerator acc, int b, int h, int kvh, int t, int s, int d, bool causal)
    {
        var rng = new Random(b * 1000 + t);
        float[] q = Bench.RandomFloats(rng, b * h * t * d), k = Bench.RandomFloats(rng, b * kvh * s * d);
        float[] v = Bench.RandomFloats(rng, b * kvh * s * d), g = Bench.RandomFloats(rng, b * h * t * d);
        double scale = (float)(1.0 / Math.Sqrt(d));
        double[] qd = [.. q.Select(x => (double)x)], kd = [.. k.Select(x => (double)x)], vd = [.. v.Select(x => (double)x)], gd = [.. g.Select(x => (double)x)];
        var oRef = new double[q.Length];
        var lseRef = new double[b * h * t];
        var dqRef = new double[q.Length];
        var dkRef = new double[k.Length];
        var dvRef = new double[v.Length];
        AttentionRef.Forward(qd, kd, vd, b, h, kvh, t, s, d, scale, causal, oRef, lseRef);
        AttentionRef.Backward(qd, kd, vd, gd, b, h, kvh, t, s, d, scale, causal, dqRef, dkRef, dvRef);

        var args = new AttentionArgs(b, h, kvh, t, s, d, (float)scale, causal);
        using var qB = acc.Allocate1D(q);
        using var kB = acc.Allocate1D(k);
        using var vB = acc.Allocate1D(v);
        using var gB = acc.Allocate1D(g);
        using var oB = acc.Allocate1D<float>(q.Length);
        using var lseB = acc.Allocate1D<float>(lseRef.Length);
        using var dqB = acc.Allocate1D<float>(q.Length);
        using var dkB = acc.Allocate1D<float>(k.Length);
        using var dvB = acc.Allocate1D<float>(v.Length);
        using var deltaB = acc.Allocate1D<float>(FlashAttention.DeltaLength(args));
        FlashAttention.Forward(acc, acc.DefaultStream, in args, qB.View, kB.View, vB.View, oB.View, lseB.View);
        FlashAttention.Backward(acc, acc.DefaultStream, in args, qB.View, kB.View, vB.View, oB.View, lseB.View, gB.View, dqB.View, dkB.View, dvB.View, deltaB.View);
        acc.Synchronize();
        double err = 0;
        err = Math.Max(err, MaxRelErr(oRef, oB.GetAsArray1D()));
        err = Math.Max(err, MaxRelErr(lseRef, lseB.GetAsArray1D()));
        err = Math.Max(err, MaxRelErr(dqRef, dqB.GetAsArray1D()));
        err = Math.Max(err, MaxRelErr(dkRef, dkB.GetAsArray1D()));
        err = Math.Max(err, MaxRelErr(dvRef, dvB.GetAsArray1D()));
        return Report($"attention fwd+bwd B={b} H={h} KVH={kvh} T={t} S={s} D={d}{(causal ? " causal" : "")}", err, 1e-5);
    }

    /// <summary>max |got - expected| / (1 + |expected|); -inf must match -inf.</summary>
    private static double MaxRelErr(double[] expected, float[] got)
    {
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (double.IsNegativeInfinity(expected[i]))
            {
                if (!float.IsNegativeInfinity(got[i])) return double.PositiveInfinity;
                continue;
            }
            double e = Math.Abs(got[i] - expected[i]) / (1 + Math.Abs(expected[i]));
            worst = double.IsNaN(e) ? double.PositiveInfinity : Math.Max(worst, e);
        }
        return worst;
    }
}
