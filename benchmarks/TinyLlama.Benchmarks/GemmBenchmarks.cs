// BenchmarkDotNet suite for the CPU GEMM (src/TinyLlama.Core/Backends/Cpu/Gemm*.cs), timed through
// CpuBackend.MatMul exactly as the model calls it: C [M, N] = A [M, K] @ B [K, N], all tensors
// allocated once in GlobalSetup. Throughput column: GFLOP/s = 2 M N K / mean time (one multiply and
// one add per term of each dot product). Napkin math for this repo's 2-core AVX2 box: 2 FMA ports x
// 8 f32 lanes x 2 flops = 32 flops per cycle per core, ~3 GHz -> ~190 GFLOP/s peak for 2 cores.
// The same shapes are measured by `tinyllama bench gemm` (median after warm-up, as JSON lines);
// see benchmarks/README.md and RESULTS.md.
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using TinyLlama.Backends.Cpu;
using TinyLlama.Tensors;

namespace TinyLlama.Benchmarks;

/// <summary>One GEMM case: shape, input dtype and micro-kernel (Auto = the fastest this CPU runs).</summary>
public sealed record GemmCase(int M, int N, int K, DType DType, string Kernel = "Auto")
{
    /// <summary>Floating-point operations of one product: 2 M N K.</summary>
    public double Flops => 2.0 * M * N * K;

    /// <summary>Short enough for BenchmarkDotNet's 20-character parameter column: "f32 1024^3", "f32 512x2048x768", "f32 1024^3 Portable".</summary>
    public override string ToString()
    {
        string type = DType switch { DType.F32 => "f32", DType.F64 => "f64", DType.BF16 => "bf16", DType.F16 => "f16", _ => DType.Name() };
        string shape = M == N && N == K ? $"{M}^3" : $"{M}x{N}x{K}";
        return $"{type} {shape}" + (Kernel == "Auto" ? "" : $" {Kernel}");
    }
}

/// <summary>f32 GEMM at square and LLaMA-shaped sizes, bf16 inputs, f64, and the portable kernel for comparison.</summary>
[Config(typeof(Config))]
[MemoryDiagnoser]
public class GemmBenchmarks
{
    private sealed class Config : ManualConfig
    {
        public Config() => AddColumn(new GflopsColumn());
    }

    /// <summary>The cases: 256/1024/2048 cubes, the MLP-shaped 512x2048x768 and 512x768x2048 (M x N x K), bf16 and f64 at 1024, and the portable kernel at 1024.</summary>
    public static IEnumerable<GemmCase> Cases()
    {
        yield return new GemmCase(256, 256, 256, DType.F32);
        yield return new GemmCase(1024, 1024, 1024, DType.F32);
        yield return new GemmCase(2048, 2048, 2048, DType.F32);
        yield return new GemmCase(512, 2048, 768, DType.F32);
        yield return new GemmCase(512, 768, 2048, DType.F32);
        yield return new GemmCase(1024, 1024, 1024, DType.BF16);
        yield return new GemmCase(1024, 1024, 1024, DType.F64);
        yield return new GemmCase(1024, 1024, 1024, DType.F32, nameof(GemmKernel.Portable));
    }

    [ParamsSource(nameof(Cases))]
    public GemmCase Case { get; set; } = new(1, 1, 1, DType.F32);

    private Tensor a = null!, b = null!, c = null!;
    private GemmKernel savedKernel;

    [GlobalSetup]
    public void Setup()
    {
        var gen = new Generator(42);
        a = Tensor.RandN([Case.M, Case.K], gen, Case.DType);   // [M, K]
        b = Tensor.RandN([Case.K, Case.N], gen, Case.DType);   // [K, N]
        c = Tensor.Zeros([Case.M, Case.N], Case.DType == DType.F64 ? DType.F64 : DType.F32); // [M, N], f32 accumulation for 16-bit inputs
        savedKernel = Gemm.KernelOverride;
        Gemm.KernelOverride = Enum.Parse<GemmKernel>(Case.Kernel);
    }

    [GlobalCleanup]
    public void Cleanup() => Gemm.KernelOverride = savedKernel;

    /// <summary>C = A @ B through the backend.</summary>
    [Benchmark]
    public void MatMul() => CpuBackend.Instance.MatMul(a, b, c);
}

/// <summary>GFLOP/s from a case's <see cref="GemmCase.Flops"/> and the measured mean time.</summary>
public sealed class GflopsColumn : IColumn
{
    public string Id => nameof(GflopsColumn);
    public string ColumnName => "GFLOP/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "2 M N K / mean time, in 1e9 flops per second";
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var stats = summary[benchmarkCase]?.ResultStatistics;
        if (stats is null || benchmarkCase.Parameters["Case"] is not GemmCase gemm) return "NA";
        double seconds = stats.Mean / 1e9; // Mean is in nanoseconds
        return (gemm.Flops / seconds / 1e9).ToString("F1", System.Globalization.CultureInfo.InvariantCulture);
    }
}
