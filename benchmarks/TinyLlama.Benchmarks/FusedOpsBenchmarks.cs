// Timings of the fused LLaMA ops on the CPU backend (Backends/Cpu/CpuBackend.{RmsNorm,Rope,Attention,SwiGlu}.cs),
// forward and backward, at the sizes of a 110M-parameter LLaMA (C = 768, H = 12 heads of D = 64,
// FFN = 2048) on T = 256 tokens. The kernels are called through the backend with preallocated outputs,
// so the time is the op's own, without allocation or autograd bookkeeping.
//
// Napkin math, in f32 (4 bytes), with N = B * T rows; divide by the measured time for GB/s or GFLOP/s:
//   RMSNorm forward    reads x, writes y                    8 N C bytes        (B = 4: 6.3 MB)
//   RMSNorm backward   reads dy, x, writes dx               12 N C bytes       (B = 4: 9.4 MB)
//   RoPE forward/back  reads x, writes y (one of q or k)    8 N H D bytes      (B = 4: 6.3 MB)
//   SwiGLU forward     reads gate, up, writes y             12 N FFN bytes     (B = 4: 25.2 MB)
//   SwiGLU backward    reads gate, up, dy, writes dg, du    20 N FFN bytes     (B = 4: 41.9 MB)
//   Attention forward  causal, S = T: T (T + 1) / 2 visible (query, key) pairs per head, each a
//                      D-long dot product (q k) and a D-long axpy (p v): 4 D FLOPs per pair
//                      -> 2 B H T (T + 1) D FLOPs                               (B = 4: 404 MFLOP)
//   Attention backward per pair: recompute q k, dP = dO v, dV += p dO, dQ += ds k, dK += ds q: 10 D FLOPs
//                      -> 5 B H T (T + 1) D FLOPs                               (B = 4: 1.01 GFLOP)
// The element-wise ops are memory bound (compare with the machine's copy bandwidth); attention is
// compute bound (compare with the GEMM benchmark's GFLOP/s).
using BenchmarkDotNet.Attributes;
using TinyLlama.Backends;
using TinyLlama.Tensors;

namespace TinyLlama.Benchmarks;

/// <summary>Forward and backward of RMSNorm, RoPE and SwiGLU on the CPU backend (memory-bound ops).</summary>
[MemoryDiagnoser]
public class FusedOpsBenchmarks
{
    private const int T = 256, C = 768, H = 12, D = 64, Ffn = 2048;

    /// <summary>Batch size B (rows N = B * T).</summary>
    [Params(1, 4)]
    public int B { get; set; }

    private IBackend backend = null!;
    // RMSNorm: x, y, dy, dx are (N, C); weight, dWeight are (C); rstd is (N)
    private Tensor x = null!, weight = null!, y = null!, rstd = null!, dy = null!, dx = null!, dWeight = null!;
    // RoPE: q, qRot are (B, T, H, D); cos, sin are (T, D/2)
    private Tensor q = null!, qRot = null!, cos = null!, sin = null!;
    // SwiGLU: gate, up, h, dh, dGate, dUp are (N, FFN)
    private Tensor gate = null!, up = null!, h = null!, dh = null!, dGate = null!, dUp = null!;

    [GlobalSetup]
    public void Setup()
    {
        var g = new Generator(1);
        int n = B * T;
        x = Tensor.RandN([n, C], g);
        weight = Tensor.RandN([C], g, mean: 1, std: 0.1);
        y = Tensor.Zeros([n, C]);
        rstd = Tensor.Zeros([n]);
        dy = Tensor.RandN([n, C], g);
        dx = Tensor.Zeros([n, C]);
        dWeight = Tensor.Zeros([C]);
        backend = x.Backend;

        q = Tensor.RandN([B, T, H, D], g);
        qRot = Tensor.Zeros([B, T, H, D]);
        (cos, sin) = Functional.RopeTables(Functional.RopeInverseFrequencies(D), 0, T);

        gate = Tensor.RandN([n, Ffn], g);
        up = Tensor.RandN([n, Ffn], g);
        h = Tensor.Zeros([n, Ffn]);
        dh = Tensor.RandN([n, Ffn], g);
        dGate = Tensor.Zeros([n, Ffn]);
        dUp = Tensor.Zeros([n, Ffn]);
        backend.RmsNorm(x, weight, 1e-5, y, rstd);
    }

    /// <summary>8 N C bytes.</summary>
    [Benchmark]
    public void RmsNormForward() => backend.RmsNorm(x, weight, 1e-5, y, rstd);

    /// <summary>12 N C bytes.</summary>
    [Benchmark]
    public void RmsNormBackward() => backend.RmsNormBackward(dy, x, weight, rstd, dx, dWeight);

    /// <summary>8 B T H D bytes.</summary>
    [Benchmark]
    public void RopeRotateHalf() => backend.Rope(q, cos, sin, RopeLayout.RotateHalf, false, qRot);

    /// <summary>8 B T H D bytes.</summary>
    [Benchmark]
    public void RopeInterleaved() => backend.Rope(q, cos, sin, RopeLayout.Interleaved, false, qRot);

    /// <summary>8 B T H D bytes (the backward is the inverse rotation).</summary>
    [Benchmark]
    public void RopeBackward() => backend.Rope(q, cos, sin, RopeLayout.RotateHalf, true, qRot);

    /// <summary>12 N FFN bytes.</summary>
    [Benchmark]
    public void SwiGluForward() => backend.SwiGlu(gate, up, h);

    /// <summary>20 N FFN bytes.</summary>
    [Benchmark]
    public void SwiGluBackward() => backend.SwiGluBackward(gate, up, dh, dGate, dUp);
}

/// <summary>Forward and backward of causal grouped-query attention on the CPU backend (compute-bound).</summary>
[MemoryDiagnoser]
public class FusedAttentionBenchmarks
{
    private const int T = 256, H = 12, D = 64;

    /// <summary>Batch size B.</summary>
    [Params(1, 4)]
    public int B { get; set; }

    /// <summary>
    /// Key/value heads: 12 is the 110M model's multi-head attention, 4 a grouped-query variant (G = 3).
    /// The backward runs one work item per (b, kv head), so fewer kv heads also means fewer parallel items.
    /// </summary>
    [Params(12, 4)]
    public int KvHeads { get; set; }

    private IBackend backend = null!;
    // aq, ao, dO, dq are (B, H, T, D); ak, av, dk, dv are (B, KVH, T, D); lse is (B, H, T)
    private Tensor aq = null!, ak = null!, av = null!, ao = null!, lse = null!, dO = null!, dq = null!, dk = null!, dv = null!;

    [GlobalSetup]
    public void Setup()
    {
        var g = new Generator(1);
        aq = Tensor.RandN([B, H, T, D], g);
        ak = Tensor.RandN([B, KvHeads, T, D], g);
        av = Tensor.RandN([B, KvHeads, T, D], g);
        ao = Tensor.Zeros([B, H, T, D]);
        lse = Tensor.Zeros([B, H, T]);
        dO = Tensor.RandN([B, H, T, D], g);
        dq = Tensor.Zeros([B, H, T, D]);
        dk = Tensor.Zeros([B, KvHeads, T, D]);
        dv = Tensor.Zeros([B, KvHeads, T, D]);
        backend = aq.Backend;
        backend.Attention(aq, ak, av, 1.0 / Math.Sqrt(D), true, ao, lse);
    }

    /// <summary>2 B H T (T + 1) D FLOPs.</summary>
    [Benchmark]
    public void AttentionForward() => backend.Attention(aq, ak, av, 1.0 / Math.Sqrt(D), true, ao, lse);

    /// <summary>5 B H T (T + 1) D FLOPs.</summary>
    [Benchmark]
    public void AttentionBackward() => backend.AttentionBackward(aq, ak, av, ao, lse, dO, 1.0 / Math.Sqrt(D), true, dq, dk, dv);
}

/// <summary>
/// A LoRA linear (rank 8 on a 768 x 768 projection, N = B x 256 rows) forward + backward through autograd:
/// the fused op (Ops/Functional.Lora.cs: one node, the adapter term added into x W^T in place) against the
/// composition x W^T + s (x A^T) B^T built from separate matmuls, a scale and an add. Napkin math: the
/// dense product is 2 N C^2 FLOPs forward and 2 N C^2 for dx backward (W frozen), the adapter 4 N r C
/// forward and ~8 N r C backward; the composition also writes and re-reads two extra [N, C] tensors
/// (forward) and scales an [N, C] gradient (backward).
/// </summary>
[MemoryDiagnoser]
public class LoraLinearBenchmarks
{
    private const int T = 256, C = 768, R = 8;
    private const double Scale = 2.0;

    [Params(1, 4)]
    public int B { get; set; }

    private Tensor x = null!, w = null!, a = null!, bMat = null!, dy = null!;

    [GlobalSetup]
    public void Setup()
    {
        var g = new Generator(1);
        x = Tensor.RandN([B * T, C], g).RequiresGrad_();
        w = Tensor.RandN([C, C], g, DType.F32, null, 0, 0.02);
        a = Tensor.RandN([R, C], g, DType.F32, null, 0, 0.02).RequiresGrad_();
        bMat = Tensor.RandN([C, R], g, DType.F32, null, 0, 0.02).RequiresGrad_();
        dy = Tensor.RandN([B * T, C], g);
    }

    [Benchmark(Baseline = true)]
    public void Composition()
    {
        x.Grad = null; a.Grad = null; bMat.Grad = null;
        var y = Tensor.MatMul(x, w.MT) + Tensor.MatMul(Tensor.MatMul(x, a.MT) * Scale, bMat.MT);
        y.Backward(dy);
    }

    [Benchmark]
    public void Fused()
    {
        x.Grad = null; a.Grad = null; bMat.Grad = null;
        Functional.LoraLinear(x, x, w, a, bMat, Scale).Backward(dy);
    }
}
