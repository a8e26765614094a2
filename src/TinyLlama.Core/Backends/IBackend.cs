// The backend interface: allocation, transfers, and one method per op family. Ops (Ops/*.cs) validate
// shapes, allocate outputs and record autograd; a backend only computes. The CPU backend is the
// definition of every op; the ILGPU backend implements the same contract with kernels.
//
// Conventions for every method:
//  - output tensors are freshly allocated by the caller, contiguous, of the shape documented here;
//  - inputs may be strided (permuted, sliced, expanded with stride 0) unless "contiguous" is stated;
//  - float compute is supported for F32 and F64; F16/BF16 are storage types (Copy converts them,
//    MatMul accepts them as inputs with F32 accumulation), and ops upcast them before calling here.
using TinyLlama.Tensors;

namespace TinyLlama.Backends;

/// <summary>Elementwise functions of one tensor.</summary>
public enum UnaryOp
{
    Neg, Exp, Log, Sqrt, Rsqrt, Abs, Sign, Sigmoid, Tanh, Relu, Square, Reciprocal,
    /// <summary>x * sigmoid(x).</summary>
    Silu,
    /// <summary>d silu(x) / dx.</summary>
    SiluGrad,
    /// <summary>x * Phi(x) with the exact normal CDF (PyTorch's default GELU).</summary>
    Gelu,
    /// <summary>d gelu(x) / dx.</summary>
    GeluGrad,
    /// <summary>min(max(x, alpha), beta).</summary>
    Clamp,
}

/// <summary>Elementwise functions of two (broadcast) tensors. Comparisons give 1 or 0 in the input dtype.</summary>
public enum BinaryOp { Add, Sub, Mul, Div, Pow, Maximum, Minimum, Eq, Ne, Lt, Le, Gt, Ge }

/// <summary>Reductions over a set of dimensions.</summary>
public enum ReduceOp { Sum, Max, Min, ArgMax, ArgMin }

/// <summary>How RoPE pairs the features of a head it rotates together.</summary>
public enum RopeLayout
{
    /// <summary>Hugging Face: feature i pairs with i + D/2 ("rotate_half").</summary>
    RotateHalf,
    /// <summary>Meta / llama2.c: features 2i and 2i+1 form a pair.</summary>
    Interleaved,
}

/// <summary>One implementation of every op, for one device.</summary>
public interface IBackend
{
    /// <summary>The device this backend runs on.</summary>
    Device Device { get; }

    /// <summary>A zero-filled buffer.</summary>
    Storage Allocate(DType dtype, int length);

    /// <summary>Copies host data into the start of a buffer of the matching dtype.</summary>
    void Upload<T>(ReadOnlySpan<T> source, Storage destination) where T : unmanaged;

    /// <summary>Copies a dense tensor's elements to host memory of the matching dtype.</summary>
    void Download<T>(Tensor source, Span<T> destination) where T : unmanaged;

    /// <summary>dst = src elementwise (same shape; any strides; converts dtype). dst may be a strided view.</summary>
    void Copy(Tensor source, Tensor destination);

    /// <summary>Every element of dst (possibly a strided view) = value.</summary>
    void Fill(Tensor destination, double value);

    /// <summary>y = op(x); alpha/beta parameterise Clamp.</summary>
    void Unary(UnaryOp op, Tensor x, Tensor y, double alpha = 0, double beta = 0);

    /// <summary>y = a op b; a and b are already broadcast (stride 0) to y's shape. y may alias a (in-place).</summary>
    void Binary(BinaryOp op, Tensor a, Tensor b, Tensor y);

    /// <summary>y = cond != 0 ? a : b; all broadcast to y's shape.</summary>
    void Where(Tensor cond, Tensor a, Tensor b, Tensor y);

    /// <summary>y (x's shape with the reduced dims set to 1) = op over dims. ArgMax/ArgMin write I32 flat indices within the reduced block.</summary>
    void Reduce(ReduceOp op, Tensor x, int[] dims, Tensor y);

    /// <summary>
    /// c[..., M, N] = a[..., M, K] @ b[..., K, N] (+ c when accumulate). a and b may have any strides
    /// (a transposed operand is just a permuted view) and their batch dims are already expanded to c's.
    /// a and b may be F16/BF16 with an F32 c (mixed precision, f32 accumulation).
    /// </summary>
    void MatMul(Tensor a, Tensor b, Tensor c, bool accumulate = false);

    /// <summary>Softmax (or log-softmax) over the last dim of a contiguous x.</summary>
    void Softmax(Tensor x, Tensor y, bool log);

    /// <summary>dx from the saved output y and dy (all contiguous, same shape).</summary>
    void SoftmaxBackward(Tensor y, Tensor dy, Tensor dx, bool log);

    /// <summary>y[n, :] = weight[ids[n], :]; weight [V, C], ids I32 [N] contiguous, y [N, C].</summary>
    void Embedding(Tensor weight, Tensor ids, Tensor y);

    /// <summary>dWeight[ids[n], :] += dy[n, :] (scatter-add; dWeight is zeroed by the caller).</summary>
    void EmbeddingBackward(Tensor dy, Tensor ids, Tensor dWeight);

    /// <summary>
    /// Per row n of logits [N, V] (contiguous): lse[n] = log sum_v exp(logits[n, v]) and
    /// losses[n] = lse[n] - logits[n, targets[n]], or 0 where targets[n] == ignoreIndex.
    /// </summary>
    void CrossEntropy(Tensor logits, Tensor targets, int ignoreIndex, Tensor losses, Tensor lse);

    /// <summary>
    /// dLogits[n, :] = scale * (softmax(logits[n]) - onehot(targets[n])), or 0 for ignored rows. scale is a
    /// one-element tensor on the same device with the logits' dtype (the upstream gradient of the summed
    /// loss), so a device backend never reads it back to the host.
    /// </summary>
    void CrossEntropyBackward(Tensor logits, Tensor targets, Tensor lse, int ignoreIndex, Tensor scale, Tensor dLogits);

    /// <summary>
    /// RMSNorm over the last dim: x [N, C] contiguous, weight [C]; y = x * rstd * weight with
    /// rstd[n] = 1 / sqrt(mean(x[n]^2) + eps), saved for backward.
    /// </summary>
    void RmsNorm(Tensor x, Tensor weight, double eps, Tensor y, Tensor rstd);

    /// <summary>dx [N, C] and dWeight [C] (overwritten) from dy, x, weight and the saved rstd.</summary>
    void RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd, Tensor dx, Tensor dWeight);

    /// <summary>
    /// Rotary embedding of x [B, T, H, D] (contiguous) with cos/sin [T, D/2] for its T positions:
    /// each pair (x1, x2) becomes (x1 cos - x2 sin, x1 sin + x2 cos); inverse rotates by -theta (the backward).
    /// </summary>
    void Rope(Tensor x, Tensor cos, Tensor sin, RopeLayout layout, bool inverse, Tensor y);

    /// <summary>
    /// Scaled dot-product attention with grouped-query heads: q [B, H, T, D], k and v [B, KVH, S, D]
    /// (contiguous, H a multiple of KVH; query head h reads kv head h / (H / KVH)). Causal masking is
    /// aligned bottom-right: query t sees keys s &lt;= t + S - T. Writes o [B, H, T, D] and the
    /// log-sum-exp of the scaled scores lse [B, H, T] for backward.
    /// </summary>
    void Attention(Tensor q, Tensor k, Tensor v, double scale, bool causal, Tensor o, Tensor lse);

    /// <summary>dq, dk, dv (overwritten) from dO and the forward's saved q, k, v, o, lse.</summary>
    void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dO, double scale, bool causal, Tensor dq, Tensor dk, Tensor dv);

    /// <summary>y = silu(gate) * up (contiguous, same shape).</summary>
    void SwiGlu(Tensor gate, Tensor up, Tensor y);

    /// <summary>
    /// A GEMM with a low-rank term, the fused LoRA linear's product: c [M, N] = a [M, K] @ b [K, N] +
    /// scale * (u [M, R] @ v [R, N]) (* mask [M, N] on the low-rank term when a mask is given), written once.
    /// a, b, u and v may be strided views (W^T and B^T are transposes); c and mask are contiguous; one float
    /// dtype. The forward is y = x W^T + s u B^T; the backward with dropout is dx = dy W + mask * (g A).
    /// </summary>
    void LowRankMatMul(Tensor a, Tensor b, Tensor u, Tensor v, double scale, Tensor c, Tensor? mask = null);

    /// <summary>dGate and dUp (overwritten) from dy.</summary>
    void SwiGluBackward(Tensor gate, Tensor up, Tensor dy, Tensor dGate, Tensor dUp);

    // ---------------- block-quantized weights (Quantization/QuantType.cs) ----------------

    /// <summary>
    /// The product of a linear layer with block-quantized weights (llama.cpp's layouts: Q4_0, Q8_0, Q4_K,
    /// Q6_K): y [M, N] = x [M, K] @ dequantize(w)^T, where w [N, K / BlockSize * BlockBytes] (a block dtype,
    /// contiguous) holds output n's blocks in row n. x is contiguous F32 or F64 and y the same dtype. The
    /// weights are expanded a block or a panel at a time where they are used; no f32 copy of w is kept.
    /// </summary>
    void MatMulQuantized(Tensor x, Tensor w, Tensor y);

    /// <summary>y [N, K] (F32 or F64, contiguous) = the values of the blocks w [N, K / BlockSize * BlockBytes] (any block dtype).</summary>
    void DequantizeBlocks(Tensor w, Tensor y);

    // ---------------- optimizer support ----------------

    /// <summary>
    /// One fused AdamW update (torch.optim.AdamW), in place on param, m and v (contiguous, same shape and
    /// dtype, F32 or F64; grad too), with t = step (1 for the first update):
    /// p = p (1 - lr wd); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    /// p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    /// </summary>
    void AdamWStep(Tensor param, Tensor grad, Tensor m, Tensor v, double lr, double beta1, double beta2, double eps, double weightDecay, int step);

    /// <summary>
    /// result += sum of x^2 over every element of x (F32 or F64, any strides), computed in f64; result is a
    /// one-element F32 or F64 tensor zeroed by the caller. Accumulating lets a global gradient norm sum many
    /// tensors on the device and read back one value.
    /// </summary>
    void SumOfSquares(Tensor x, Tensor result);
}
