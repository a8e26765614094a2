// Timings of the int4 product with Q4_0 weights (Backends/Cpu/CpuBackend.Quantized.cs) against the f32
// product of the same shape and layout (x @ W^T with W [N, K] read in place), on the CPU backend, through
// the backend with preallocated outputs.
//
// Napkin math for N = K = 4096: 2 M N K FLOPs (M = 1: 33.6 MFLOP); the weights are 67.1 MB in f32 and
// 9.4 MB in Q4_0 (18 bytes per 32 weights). At M = 1 an f32 mat-vec is bound by reading W (divide 67.1 MB
// by the time for GB/s), and the int4 one by either reading 9.4 MB or decoding 16.8 M nibbles (about 24
// vector instructions per 32 weights), whichever is slower on the machine. At M = 64 both are GEMMs; the
// int4 path adds expanding W to f32 once per call.
using BenchmarkDotNet.Attributes;
using TinyLlama.Backends;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Benchmarks;

/// <summary>y = x @ dequantize(w)^T with Q4_0 w, against x @ W^T in f32.</summary>
[MemoryDiagnoser]
public class QuantizedBenchmarks
{
    private const int N = 4096, K = 4096;

    /// <summary>Rows of x: 1 decodes one token, 64 is a short prefill.</summary>
    [Params(1, 64)]
    public int M { get; set; }

    private IBackend backend = null!;
    // x is (M, K); w is (N, K) f32 and q its Q4_0 blocks (N, K / 32 * 18); y is (M, N)
    private Tensor x = null!, wT = null!, q = null!, y = null!;

    [GlobalSetup]
    public void Setup()
    {
        var g = new Generator(1);
        var w = Tensor.RandN([N, K], g);
        wT = w.MT;
        q = Quantize.Q4_0(w);
        x = Tensor.RandN([M, K], g);
        y = Tensor.Zeros([M, N]);
        backend = x.Backend;
    }

    [Benchmark(Baseline = true, Description = "f32 x @ W^T")]
    public void F32() => backend.MatMul(x, wT, y);

    [Benchmark(Description = "q4_0 x @ dequantize(w)^T")]
    public void Q4_0() => backend.MatMulQ4(x, q, y);
}
