// An embedding table held as block-quantized rows (llama.cpp's q4_0 files keep token_embd in Q4_0): a lookup
// expands only the rows it reads (Functional.EmbeddingQuantized), and a tied output layer multiplies by the
// blocks directly (Functional.LinearQuantized), so the table is never expanded to f32 as a whole. Frozen.
// The looked-up rows come out in the model's dtype (f32 by default; f64 for gradient checks, f16/bf16 for a
// half model), and a half h is multiplied in f32 (the product takes f32 or f64 x), its logits rounded back.
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.NN;

/// <summary>A lookup table of vectors stored as quantized blocks [V, dim / blockSize * blockBytes].</summary>
public sealed class QuantizedEmbedding : Embedding
{
    /// <summary>A table over <paramref name="blocks"/> (used in place), frozen, whose rows come out in <paramref name="dtype"/> (a float type).</summary>
    public QuantizedEmbedding(Tensor blocks, DType dtype = DType.F32) : base(Sizes(blocks).V, Sizes(blocks).Dim, blocks)
    {
        if (!dtype.IsFloat()) throw new ArgumentException($"QuantizedEmbedding: the rows' dtype must be a float type, got {dtype.Name()}");
        if (blocks.IsLeaf) blocks.RequiresGrad = false;
        OutputDType = dtype;
    }

    /// <summary>The dtype of the looked-up rows.</summary>
    public DType OutputDType { get; }

    /// <summary>ids [...] -> [..., dim] in <see cref="OutputDType"/>.</summary>
    public override Tensor Forward(Tensor ids)
    {
        var rows = Functional.EmbeddingQuantized(ids, Weight); // f32
        return rows.DType == OutputDType ? rows : rows.To(OutputDType);
    }

    /// <summary>h [..., dim] -> [..., V] in h's dtype.</summary>
    public override Tensor Attend(Tensor h) => QuantizedLinear.Product(h, Weight);

    private static (int V, int Dim) Sizes(Tensor blocks)
    {
        var (n, k, _) = Quantize.CheckBlockWeight(blocks, "QuantizedEmbedding");
        return (n, k);
    }
}
