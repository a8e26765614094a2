// Ops over block-quantized weights (llama.cpp's layouts, Quantization/QuantType.cs: Q4_0, Q8_0, Q4_K, Q6_K),
// which are expanded only where they are used and are never trained (frozen, as in QLoRA):
//   LinearQuantized: y = x W^T with W [out, in] stored as blocks (IBackend.MatMulQuantized: in registers or a
//     stack buffer on the CPU's small-M path, panel by panel for larger M). The only gradient is
//     dx = dy W, for which W is expanded once into a temporary and multiplied on the GEMM.
//     Naive definition: Ops/Reference/MatMulQuantizedRef.cs.
//   Embedding over a block table (Functional.Embedding forwards here): the byte rows of the looked-up ids
//     are gathered (a row of the table is a whole number of blocks) and only they are dequantized, so a
//     q4_0 token_embd, as llama.cpp's files keep it, is never expanded as a whole. No gradient to the table.
using TinyLlama.Autograd;
using TinyLlama.Quantization;

namespace TinyLlama.Tensors;

public static partial class Functional
{
    /// <summary>x [..., in] (f32 or f64) @ W^T with W [out, in] given as blocks weight [out, in / BlockSize * BlockBytes] (any block dtype).</summary>
    public static Tensor LinearQuantized(Tensor x, Tensor weight)
    {
        const string op = "linear_quantized";
        var (outF, inF, _) = Quantize.CheckBlockWeight(weight, op);
        if (x.Rank < 1 || x.shape[^1] != inF)
            throw new ArgumentException($"{op}: x {Shapes.Format(x.shape)} does not end in the weights' {inF} input features");
        if (x.DType is not (DType.F32 or DType.F64))
            throw new ArgumentException($"{op}: x must be f32 or f64, got {x.DType.Name()}");
        if (weight.Device != x.Device)
            throw new ArgumentException($"{op}: x is on {x.Device} but the weights are on {weight.Device}");
        int n = x.Numel / inF;
        var x2 = x.Detach().Reshape(n, inF).Contiguous();                // (N, in)
        var y = Tensor.Zeros([n, outF], x.DType, x.Device);              // (N, out)
        y.Backend.MatMulQuantized(x2, weight, y);
        var outShape = x.shape[..^1].Append(outF).ToArray();
        return Engine.Record(y.Reshape(outShape), "LinearQuantizedBackward", [x], dy =>
        {
            var w = Quantize.Dequantize(weight, x.DType);                // (out, in), dropped after the product
            return [Tensor.MatMul(dy.Reshape(n, outF), w).Reshape(x.shape)];
        });
    }

    /// <summary>LinearQuantized with Q4_0 weights (kept for callers written before the other block types).</summary>
    public static Tensor LinearQ4(Tensor x, Tensor weightQ4) => LinearQuantized(x, weightQ4);

    /// <summary>
    /// Rows of a block table weight [V, row bytes] (any block dtype, rows of C weights) picked by int32 ids
    /// (any shape), dequantized: result [..ids.shape, C] in f32. Only the picked rows are expanded; no gradient.
    /// </summary>
    public static Tensor EmbeddingQuantized(Tensor ids, Tensor weight)
    {
        const string op = "embedding";
        if (ids.DType != DType.I32) throw new ArgumentException($"{op}: ids must be int32, got {ids.DType.Name()}");
        var (_, c, _) = Quantize.CheckBlockWeight(weight, op);
        if (ids.Device != weight.Device)
            throw new ArgumentException($"{op}: ids are on {ids.Device} but the table is on {weight.Device}");
        var flat = ids.Detach().Contiguous().Reshape(-1);
        var rows = Tensor.Zeros([flat.Numel, weight.shape[1]], weight.DType, weight.Device);   // (n, row bytes) blocks
        if (flat.Numel > 0) weight.Backend.Embedding(weight, flat, rows);
        var y = flat.Numel > 0 ? Quantize.Dequantize(rows) : Tensor.Zeros([0, c], DType.F32, weight.Device);
        return y.Reshape(ids.shape.Append(c).ToArray());
    }
}
