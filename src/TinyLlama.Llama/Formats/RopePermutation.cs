// The row permutation between the two ways of pairing a head's dimensions for RoPE.
//
// Meta's original LLaMA code, llama2.c and llama.cpp rotate adjacent pairs (2i, 2i+1) of each head
// ("interleaved"); Hugging Face rotates (i, i + HS/2) ("rotate_half"). The two are the same model once
// the rows of wq and wk are reordered within each head: HF row j*HS/2 + i is interleaved row 2i + j
// (j in {0, 1}, i < HS/2). transformers' convert_llama_weights_to_hf.py (`permute`) goes from
// interleaved to rotate-half; llama.cpp's convert_hf_to_gguf.py (LlamaModel.permute:
// reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2)) goes back, with n_head = the number of
// KV heads for wk. The permutation moves whole rows, so it applies to any row layout: floats, or the
// bytes of a block-quantized row (blocks never straddle rows).
using TinyLlama.Tensors;

namespace TinyLlama.Formats;

/// <summary>Reorders q/k projection rows between RoPE's interleaved and rotate-half pairings.</summary>
public static class RopePermutation
{
    /// <summary>
    /// Rows of <paramref name="source"/> [heads * headDim, rowWidth] reordered: to rotate-half (HF) from
    /// interleaved when <paramref name="toRotateHalf"/>, the inverse otherwise.
    /// </summary>
    public static void Apply<T>(ReadOnlySpan<T> source, Span<T> destination, int heads, int headDim, int rowWidth, bool toRotateHalf)
    {
        if (headDim % 2 != 0) throw new ArgumentException($"rope permutation: head_dim {headDim} must be even");
        if (source.Length != (long)heads * headDim * rowWidth || destination.Length != source.Length)
            throw new ArgumentException($"rope permutation: {source.Length} values (destination {destination.Length}) are not heads {heads} x head_dim {headDim} x row {rowWidth}");
        int half = headDim / 2;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
                for (int j = 0; j < 2; j++)
                {
                    int interleaved = h * headDim + 2 * i + j, rotateHalf = h * headDim + j * half + i;
                    int src = toRotateHalf ? interleaved : rotateHalf, dst = toRotateHalf ? rotateHalf : interleaved;
                    source.Slice(src * rowWidth, rowWidth).CopyTo(destination.Slice(dst * rowWidth, rowWidth));
                }
    }

    /// <summary>
    /// A new tensor with the rows of a 2-D weight [heads * headDim, cols] permuted (see <see cref="Apply{T}"/>);
    /// any stored DType, block types included (their rows are bytes). The result is a dense host tensor.
    /// </summary>
    public static Tensor Apply(Tensor weight, int heads, bool toRotateHalf)
    {
        if (weight.Rank != 2 || heads <= 0 || weight.Size(0) % heads != 0)
            throw new ArgumentException($"rope permutation: expected a matrix whose {heads} heads divide its rows, got {Shapes.Format(weight.Shape)}");
        int rows = weight.Size(0), width = weight.Size(1), headDim = rows / heads;
        return weight.DType switch
        {
            DType.F32 => Permute<float>(weight),
            DType.F16 => Permute<Half>(weight),
            DType.BF16 => Permute<BFloat16>(weight),
            DType.F64 => Permute<double>(weight),
            _ when weight.DType.IsQuantized() => PermuteBytes(weight),
            _ => throw new ArgumentException($"rope permutation: {weight.DType.Name()} is not a weight dtype"),
        };

        Tensor Permute<T>(Tensor w) where T : unmanaged
        {
            var result = CpuStorage.Allocate(w.DType, w.Numel);
            Apply<T>(w.ToArray<T>(), result.AsSpan<T>(), heads, headDim, width, toRotateHalf);
            return Tensor.FromStorage(result, [rows, width]);
        }

        Tensor PermuteBytes(Tensor w)
        {
            var result = new byte[w.Numel];
            Apply(TensorFileIO.BlockBytes(w), result, heads, headDim, width, toRotateHalf);
            return Tensor.FromStorage(new CpuStorage(w.DType, result), [rows, width]);
        }
    }
}
