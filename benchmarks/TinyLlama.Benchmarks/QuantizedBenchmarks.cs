// Timings of the products with block-quantized weights (Backends/Cpu/CpuBackend.Quantized.cs: Q4_0, Q8_0,
// Q4_K, Q6_K) against the f32 product of the same shape and layout (x @ W^T with W [N, K] read in place), on
// the CPU backend, through the backend with preallocated outputs.
//
// Napkin math for N = K = 4096: 2 M N K FLOPs (M = 1: 33.6 MFLOP); the weights are 67.1 MB in f32,
// 9.4 MB in Q4_0 and Q4_K (18 bytes per 32 weights, 144 per 256), 17.8 MB in Q8_0 (34 per 32) and 13.8 MB
// in Q6_K (210 per 256). The K-quants expand each super-block into a stack buffer before the dot, so at
// M = 1 they are bound by decoding rather than by memory on most machines. At M = 1 an f32 mat-vec is bound by reading W (divide 67.1 MB
// by the time for GB/s), and the int4 one by either reading 9.4 MB or decoding 16.8 M nibbles (about 24
// vector instructions per 32 weights), whichever is slower on the machine. At M = 64 both are GEMMs; the
// int4 path adds expanding W to f32 once per call.
using BenchmarkDotNet.Attributes;
using TinyLlama.Backends;
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.Benchmarks;

/// <summary>y = x @ dequantize(w)^T with block-quantized w, against x @ W^T in f32.</summary>
[MemoryDiagnoser]
public class QuantizedBenchmarks
{
    private const int N = 4096, K = 4096;

    /// <summary>Rows of x: 1 decodes one token, 64 is a short prefill.</summary>
    [Params(1, 64)]
    public int M { get; set; }

    private IBackend backend = null!;
    // x is (M, K); w is (N, K) f32, q its Q4_0 blocks (N, K / 32 * 18) and q8 its Q8_0 blocks; q4k and q6k
    // are random valid K-quant blocks of the same shape (they cannot be written); y is (M, N)
    private Tensor x = null!, wT = null!, q = null!, q8 = null!, q4k = null!, q6k = null!, y = null!;

    [GlobalSetup]
    public void Setup()
    {
        var g = new Generator(1);
        var w = Tensor.RandN([N, K], g);
        wT = w.MT;
        q = Quantize.Q4_0(w);
        q8 = Quantize.ToBlocks(w, QuantType.Q8_0);
        q4k = Quantize.RandomBlocks(QuantType.Q4_K, N, K, g);
        q6k = Quantize.RandomBlocks(QuantType.Q6_K, N, K, g);
        x = Tensor.RandN([M, K], g);
        y = Tensor.Zeros([M, N]);
        backend = x.Backend;
    }

    [Benchmark(Baseline = true, Description = "f32 x @ W^T")]
    public void F32() => backend.MatMul(x, wT, y);

    [Benchmark(Description = "q4_0 x @ dequantize(w)^T")]
    public void Q4_0() => backend.MatMulQuantized(x, q, y);

    [Benchmark(Description = "q8_0 x @ dequantize(w)^T")]
    public void Q8_0() => backend.MatMulQuantized(x, q8, y);

    [Benchmark(Description = "q4_K x @ dequantize(w)^T")]
    public void Q4_K() => backend.MatMulQuantized(x, q4k, y);

    [Benchmark(Description = "q6_K x @ dequantize(w)^T")]
    public void Q6_K() => backend.MatMulQuantized(x, q6k, y);
}

/// <summary>
/// One Q4_0 row of K = 4096 weights dotted with x: the f32 decode path the decoder uses today
/// (CpuBackend.DotQ4_0: nibbles widened to f32, FMAs) against the integer path (Backends/Cpu/IntegerDot.cs:
/// x quantized to Q8_0 once, then int8 products per block). In a mat-vec x is quantized once for all N rows,
/// so "int dot" is the per-row cost and "quantize x" is paid once per token. Napkin math: the row is 2304
/// bytes (L1-resident here), so this compares instruction counts, not memory traffic. A quick Stopwatch run
/// (best of 7 x 5000 calls, AVX2 test machine, noisy, not BenchmarkDotNet) gave 0.55 us for the f32 decode,
/// 1.09 us for the AVX2 int dot (the exact per-block horizontal sums and in-order scalar float loop cost
/// more than they save), 5.7 us for the scalar int dot, and 5.2 us (AVX2) / 14.2 us (reference) to quantize x.
/// </summary>
public unsafe class IntegerDotBenchmarks
{
    private const int K = 4096;
    private float[] x = null!;
    private byte[] w = null!, xq = null!;

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        x = new float[K];
        var wf = new float[K];
        for (int i = 0; i < K; i++) { x[i] = (float)(rng.NextDouble() * 2 - 1); wf[i] = (float)(rng.NextDouble() * 2 - 1); }
        w = new byte[K / 32 * 18];
        xq = new byte[K / 32 * 34];
        QuantTypes.QuantizeRowQ4_0(wf, w);
        TinyLlama.Backends.Cpu.IntegerDot.QuantizeRowQ8_0(x, xq);
    }

    [Benchmark(Baseline = true, Description = "q4_0 f32 decode dot")]
    public float F32Decode()
    {
        fixed (byte* pw = w) fixed (float* px = x) return TinyLlama.Backends.Cpu.CpuBackend.DotQ4_0(pw, px, K / 32);
    }

    [Benchmark(Description = "q4_0 x q8_0 int dot")]
    public float IntegerDot() => TinyLlama.Backends.Cpu.IntegerDot.DotQ4_0Q8_0(w, xq);

    [Benchmark(Description = "quantize x to q8_0")]
    public void QuantizeX() => TinyLlama.Backends.Cpu.IntegerDot.QuantizeRowQ8_0(x, xq);
}
