// An embedding table held as block-quantized rows (llama.cpp's q4_0 files keep token_embd in Q4_0): a lookup
// expands only the rows it reads (Functional.EmbeddingQuantized), and a tied output layer multiplies by the
// blocks directly (Functional.LinearQuantized), so the table is never expanded to f32 as a whole. Frozen.
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.NN;

/// <summary>A lookup table of vectors stored as quantized blocks [V, dim / blockSize * blockBytes].</summary>
public sealed class QuantizedEmbedding : Embedding
{
    /// <summary>A table over <paramref name="blocks"/> (used in place), frozen.</summary>
    public QuantizedEmbedding(Tensor blocks) : base(Sizes(blocks).V, Sizes(blocks).Dim, blocks)
    {
        if (blocks.IsLeaf) blocks.RequiresGrad = false;
    }

    public override Tensor Forward(Tensor ids) => Functional.EmbeddingQuantized(ids, Weight);

    public override Tensor Attend(Tensor h) => Functional.LinearQuantized(h, Weight);

    private static (int V, int Dim) Sizes(Tensor blocks)
    {
        var (n, k, _) = Quantize.CheckBlockWeight(blocks, "QuantizedEmbedding");
        return (n, k);
    }
}
