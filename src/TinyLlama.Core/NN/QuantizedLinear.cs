// A linear layer whose weight is block-quantized (llama.cpp's Q4_0, Q8_0, Q4_K or Q6_K blocks; see
// Quantization/QuantType.cs): y = x dequantize(W)^T + b, with W stored as [out, rowBytes] bytes and
// expanded only where it is used (Functional.LinearQuantized: in registers on the CPU's mat-vec path,
// a panel at a time for the GEMM path, in the ILGPU kernels). The weight is frozen, as in QLoRA: the only
// gradient is dx (training reaches such a layer through a LoraLinear wrapped around it).
//
// As the house style asks, quantized weights are a module that takes a float Linear's place (Module.
// ReplaceModule), not a branch inside Linear: FromWeights puts one wherever a checkpoint holds a block
// tensor, and the parameter keeps the checkpoint's name ("...q_proj.weight"). In a half (f16/bf16) model
// the product is taken in f32, as llama.cpp keeps activations in f32, and its result rounded back.
using TinyLlama.Quantization;
using TinyLlama.Tensors;

namespace TinyLlama.NN;

/// <summary>y = x dequantize(W)^T + b with W [outFeatures, inFeatures] held as quantized blocks.</summary>
public sealed class QuantizedLinear : Linear
{
    /// <summary>
    /// A layer over <paramref name="blocks"/> (a block-quantized tensor [out, in / blockSize * blockBytes]; used in
    /// place, not copied) and an optional float <paramref name="bias"/> [out]. Both are frozen.
    /// </summary>
    public QuantizedLinear(Tensor blocks, Tensor? bias = null)
        : base(Sizes(blocks).In, Sizes(blocks).Out, Frozen(blocks), bias is null ? null : Frozen(bias))
    {
        if (bias is not null && (bias.Rank != 1 || bias.Size(0) != OutFeatures || !bias.DType.IsFloat()))
            throw new ArgumentException($"QuantizedLinear: bias must be a float [{OutFeatures}], got {bias.DType.Name()} {Shapes.Format(bias.Shape)}");
    }

    /// <summary>The block format of the weight.</summary>
    public QuantType Format => QuantTypes.FromDType(Weight.DType);

    /// <summary>x [..., in] (f32, f64, f16 or bf16) -> [..., out] in x's dtype.</summary>
    public override Tensor Forward(Tensor x)
    {
        InputObserver?.Invoke(x);
        var y = Product(x, Weight);
        return Bias is null ? y : y + Bias.To(y.DType);
    }

    /// <summary>x [..., in] @ dequantize(blocks)^T in x's dtype: f32 and f64 directly, a half x through f32.</summary>
    internal static Tensor Product(Tensor x, Tensor blocks) =>
        x.DType.IsHalf() ? Functional.LinearQuantized(x.To(DType.F32), blocks).To(x.DType) : Functional.LinearQuantized(x, blocks);

    private static (int Out, int In) Sizes(Tensor blocks)
    {
        var (n, k, _) = Quantize.CheckBlockWeight(blocks, "QuantizedLinear");
        return (n, k);
    }

    private static Tensor Frozen(Tensor t)
    {
        if (t.IsLeaf) t.RequiresGrad = false;
        return t;
    }
}
