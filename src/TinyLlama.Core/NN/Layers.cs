// Basic layers: Linear (y = x W^T + b, W stored [out, in] as in PyTorch), Embedding, RMSNorm.
// Initialisation follows PyTorch's defaults unless stated; all draws come from a seeded Generator.
//
// A LoRA adapter is not part of Linear: LoraLinear (NN/LoraLinear.cs) wraps a Linear and takes its place.
using TinyLlama.Tensors;

namespace TinyLlama.NN;

/// <summary>y = x W^T + b with W [outFeatures, inFeatures].</summary>
public class Linear : Module
{
    /// <summary>A layer with U(-1/sqrt(in), 1/sqrt(in)) weights, or zeros when <paramref name="init"/> is false (the caller initialises or loads them).</summary>
    public Linear(int inFeatures, int outFeatures, bool bias = false, Generator? generator = null, DType dtype = DType.F32, Device? device = null, bool init = true)
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        // PyTorch's kaiming_uniform(a = sqrt(5)) reduces to U(-1/sqrt(in), 1/sqrt(in)).
        double bound = 1.0 / Math.Sqrt(inFeatures);
        Weight = RegisterParameter("weight", init ? Tensor.Rand([outFeatures, inFeatures], generator, dtype, device, -bound, bound) : Tensor.Zeros([outFeatures, inFeatures], dtype, device));
        if (bias) Bias = RegisterParameter("bias", init ? Tensor.Rand([outFeatures], generator, dtype, device, -bound, bound) : Tensor.Zeros([outFeatures], dtype, device));
    }

    /// <summary>
    /// A layer over the given tensors (not copies): <paramref name="weight"/> is [out, in] for a float layer or a
    /// block-quantized tensor [out, rowBytes] for QuantizedLinear, so the sizes are given, not read from it.
    /// </summary>
    protected Linear(int inFeatures, int outFeatures, Tensor weight, Tensor? bias)
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Weight = RegisterParameter("weight", weight);
        if (bias is not null) Bias = RegisterParameter("bias", bias);
    }

    /// <summary>
    /// A layer over <paramref name="source"/>'s own weight and bias tensors (not copies), registered under the
    /// same names, for a subclass that wraps it (LoraLinear). The sizes come from the source, not from its
    /// weight's shape, which for a block-quantized weight is [out, rowBytes].
    /// </summary>
    protected Linear(Linear source)
    {
        ArgumentNullException.ThrowIfNull(source);
        InFeatures = source.InFeatures;
        OutFeatures = source.OutFeatures;
        Weight = RegisterParameter("weight", source.Weight);
        if (source.Bias is not null) Bias = RegisterParameter("bias", source.Bias);
    }

    public int InFeatures { get; }
    public int OutFeatures { get; }

    /// <summary>[out, in].</summary>
    public Tensor Weight { get; private set; }

    /// <summary>[out] or null.</summary>
    public Tensor? Bias { get; private set; }

    /// <summary>
    /// Called with each input x [..., in] before the product (null: nothing is called). Calibration uses it:
    /// GPTQ accumulates its Hessian 2 X X^T from the inputs a layer sees.
    /// </summary>
    public virtual Action<Tensor>? InputObserver { get; set; }

    /// <summary>x [..., in] -> [..., out]. W^T is a transposed view; the GEMM reads it in place.</summary>
    public virtual Tensor Forward(Tensor x)
    {
        InputObserver?.Invoke(x);
        var y = Tensor.MatMul(x, Weight.MT);
        return Bias is null ? y : y + Bias;
    }

    protected override void OnParameterReplaced(string name, Tensor value)
    {
        if (name == "weight") Weight = value;
        else if (name == "bias") Bias = value;
    }
}

/// <summary>A lookup table of vectors: ids [...] -> [..., dim].</summary>
public class Embedding : Module
{
    /// <summary>A table of standard-normal vectors, or zeros when <paramref name="init"/> is false (the caller initialises or loads it).</summary>
    public Embedding(int numEmbeddings, int dim, Generator? generator = null, DType dtype = DType.F32, Device? device = null, bool init = true)
    {
        NumEmbeddings = numEmbeddings;
        Dim = dim;
        Weight = RegisterParameter("weight", init ? Tensor.RandN([numEmbeddings, dim], generator, dtype, device) : Tensor.Zeros([numEmbeddings, dim], dtype, device));
    }

    /// <summary>A table over <paramref name="weight"/> (not copied), for a subclass whose table is not [V, dim] floats (QuantizedEmbedding).</summary>
    protected Embedding(int numEmbeddings, int dim, Tensor weight)
    {
        NumEmbeddings = numEmbeddings;
        Dim = dim;
        Weight = RegisterParameter("weight", weight);
    }

    /// <summary>V, the number of rows.</summary>
    public int NumEmbeddings { get; }

    /// <summary>The width of a row.</summary>
    public int Dim { get; }

    /// <summary>[V, dim].</summary>
    public Tensor Weight { get; private set; }

    /// <summary>ids [...] -> [..., dim].</summary>
    public virtual Tensor Forward(Tensor ids) => Functional.Embedding(ids, Weight);

    /// <summary>h [..., dim] -> h W^T [..., V]: the table used as a tied output layer (logits over the vocabulary).</summary>
    public virtual Tensor Attend(Tensor h) => Tensor.MatMul(h, Weight.MT);

    protected override void OnParameterReplaced(string name, Tensor value) => Weight = value;
}
