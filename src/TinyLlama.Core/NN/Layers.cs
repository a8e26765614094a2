// Basic layers: Linear (y = x W^T + b, W stored [out, in] as in PyTorch), Embedding, RMSNorm.
// Initialisation follows PyTorch's defaults unless stated; all draws come from a seeded Generator.
//
// Linear can carry a LoRA adapter (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
// 2021, arXiv:2106.09685, eq. 3), laid out as Hugging Face PEFT's LoraLayer (peft/tuners/lora/layer.py):
//
//   y = x W^T + b + s * (dropout(x) A^T) B^T,    A [r, in], B [out, r], s = alpha / r
//
// A and B are child Linears named "lora_A" and "lora_B", so their parameters are "<linear>.lora_A.weight"
// and "<linear>.lora_B.weight", PEFT's names with the adapter name removed. As in PEFT, A starts with
// kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)) and B with zeros, so a fresh adapter changes
// nothing; W (and b) are frozen. The merged weight W + s B A is never formed in the forward pass: the two
// thin products cost 2 r (in + out) multiply-adds per row instead of in * out, and the gradient reaches
// A and B through them. MergeLora folds s B A into W once training is done and removes the adapter.
using TinyLlama.Autograd;
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
    public Action<Tensor>? InputObserver { get; set; }

    /// <summary>
    /// x [..., in] -> [..., out]. W^T is a transposed view; the GEMM reads it in place. With a LoRA
    /// adapter, s * (dropout(x) A^T) B^T is added; without one, the only extra work is a null check.
    /// </summary>
    public virtual Tensor Forward(Tensor x)
    {
        InputObserver?.Invoke(x);
        if (lora is not null && CanFuseLora(x))
        {
            // One fused op (Ops/Functional.Lora.cs): the adapter's term is added into x W^T in place.
            // Dropout on the adapter's input enters as its keep-mask (drawn as Functional.Dropout draws it), so
            // the backward forms dx = dy W + mask * (s dy B A) in one product.
            var mask = lora.Dropout > 0 && Training ? Functional.DropoutMask(x.shape, lora.Dropout, lora.Generator, x.DType, x.Device) : null;
            var fused = Functional.LoraLinear(x, Weight, LoraA!.Weight, LoraB!.Weight, lora.Alpha / lora.Rank, mask);
            return Bias is null ? fused : fused + Bias;
        }
        var y = Tensor.MatMul(x, Weight.MT);
        if (Bias is not null) y = y + Bias;
        return lora is null ? y : y + LoraForward(x, lora, y.DType);
    }

    protected override void OnParameterReplaced(string name, Tensor value)
    {
        if (name == "weight") Weight = value;
        else if (name == "bias") Bias = value;
    }

    // ---------------- LoRA ----------------

    /// <summary>The adapter's hyper-parameters and random source; null when there is no adapter.</summary>
    private sealed record LoraSettings(int Rank, double Alpha, double Dropout, Generator Generator);

    private LoraSettings? lora;

    /// <summary>True while a LoRA adapter is attached (see <see cref="EnableLora"/>).</summary>
    public bool HasLora => lora is not null;

    /// <summary>The adapter's down-projection A (weight [r, in]), registered as "lora_A"; null without an adapter.</summary>
    public Linear? LoraA { get; private set; }

    /// <summary>The adapter's up-projection B (weight [out, r]), registered as "lora_B"; null without an adapter.</summary>
    public Linear? LoraB { get; private set; }

    /// <summary>The adapter's rank r (0 without an adapter).</summary>
    public int LoraRank => lora?.Rank ?? 0;

    /// <summary>The adapter's alpha (0 without an adapter).</summary>
    public double LoraAlpha => lora?.Alpha ?? 0;

    /// <summary>The dropout probability applied to the adapter's input in training (0 without an adapter).</summary>
    public double LoraDropout => lora?.Dropout ?? 0;

    /// <summary>s = alpha / r, the factor on the adapter's output (0 without an adapter).</summary>
    public double LoraScaling => lora is null ? 0 : lora.Alpha / lora.Rank;

    /// <summary>
    /// Attaches a LoRA adapter of rank <paramref name="rank"/>: registers child modules "lora_A"
    /// (in -> r, U(-1/sqrt(in), 1/sqrt(in)) from <paramref name="generator"/>) and "lora_B" (r -> out,
    /// zeros), and freezes this layer's weight and bias (RequiresGrad false). The adapter's input goes
    /// through dropout with probability <paramref name="dropout"/> while <see cref="Module.Training"/> is
    /// true, with masks drawn from <paramref name="generator"/> (give the same generator to activation
    /// checkpointing so recomputation sees the same masks). The adapter is f32 when the base weight is
    /// 16-bit or quantized (as PEFT's autocast_adapter_dtype), f64 when it is f64.
    /// </summary>
    public void EnableLora(int rank, double alpha, double dropout = 0.0, Generator? generator = null)
    {
        if (lora is not null) throw new InvalidOperationException("EnableLora: this Linear already has a LoRA adapter; merge or remove it first");
        if (rank < 1) throw new ArgumentOutOfRangeException(nameof(rank), rank, "EnableLora: rank must be at least 1");
        if (!double.IsFinite(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, "EnableLora: alpha must be finite");
        if (!(dropout >= 0 && dropout < 1)) throw new ArgumentOutOfRangeException(nameof(dropout), dropout, "EnableLora: dropout must be in [0, 1)");
        var gen = generator ?? Generator.Default;
        var dtype = Weight.DType == DType.F64 ? DType.F64 : DType.F32;
        // PEFT's reset_lora_parameters: kaiming_uniform_(A, a=sqrt(5)), which is Linear's default init, and zeros_(B).
        LoraA = RegisterModule("lora_A", new Linear(InFeatures, rank, false, gen, dtype, Weight.Device));
        LoraB = RegisterModule("lora_B", new Linear(rank, OutFeatures, false, null, dtype, Weight.Device, init: false));
        LoraA.Train(Training);
        LoraB.Train(Training);
        if (Weight.IsLeaf) Weight.RequiresGrad = false;
        if (Bias is not null && Bias.IsLeaf) Bias.RequiresGrad = false;
        lora = new LoraSettings(rank, alpha, dropout, gen);
    }

    /// <summary>
    /// Folds the adapter into the weight, W += (alpha / r) B A (computed in the adapter's dtype, then
    /// rounded to W's), and removes the adapter, so the layer is a plain Linear again with the usual
    /// parameter names. W is updated in place and stays frozen.
    /// </summary>
    public void MergeLora()
    {
        var settings = lora ?? throw new InvalidOperationException("MergeLora: this Linear has no LoRA adapter");
        if (!Weight.DType.IsFloat()) throw new InvalidOperationException($"MergeLora: cannot merge into a {Weight.DType.Name()} weight; dequantize it first");
        using (GradMode.NoGrad())
        {
            var delta = Tensor.MatMul(LoraB!.Weight, LoraA!.Weight) * (settings.Alpha / settings.Rank); // [out, in]
            Weight.Add_(delta);
        }
        RemoveLora();
    }

    /// <summary>Detaches the adapter without merging it (PEFT's unload): the layer computes x W^T + b again.</summary>
    public void RemoveLora()
    {
        if (lora is null) throw new InvalidOperationException("RemoveLora: this Linear has no LoRA adapter");
        UnregisterModule("lora_A");
        UnregisterModule("lora_B");
        LoraA = null;
        LoraB = null;
        lora = null;
    }

    // The fused path takes one full-precision dtype throughout; mixed precision (autocast, 16-bit weights
    // or adapters) composes the adapter from separate products instead.
    private bool CanFuseLora(Tensor x) =>
        Autocast.Current is null && x.DType is (DType.F32 or DType.F64) &&
        Weight.DType == x.DType && LoraA!.Weight.DType == x.DType && LoraB!.Weight.DType == x.DType;

    /// <summary>s * (dropout(x) A^T) B^T for x [..., in] -> [..., out], in <paramref name="outType"/>.</summary>
    private Tensor LoraForward(Tensor x, LoraSettings settings, DType outType)
    {
        var a = LoraA!;
        var h = x.DType == a.Weight.DType ? x : x.To(a.Weight.DType);
        if (settings.Dropout > 0) h = Functional.Dropout(h, settings.Dropout, Training, settings.Generator);
        // Scaling the r-wide intermediate instead of the out-wide result: same value, fewer multiplies.
        var d = LoraB!.Forward(a.Forward(h) * (settings.Alpha / settings.Rank)); // [..., out]
        return d.DType == outType ? d : d.To(outType);
    }
}

/// <summary>A lookup table of vectors: ids [...] -> [..., dim].</summary>
public sealed class Embedding : Module
{
    /// <summary>A table of standard-normal vectors, or zeros when <paramref name="init"/> is false (the caller initialises or loads it).</summary>
    public Embedding(int numEmbeddings, int dim, Generator? generator = null, DType dtype = DType.F32, Device? device = null, bool init = true)
    {
        Weight = RegisterParameter("weight", init ? Tensor.RandN([numEmbeddings, dim], generator, dtype, device) : Tensor.Zeros([numEmbeddings, dim], dtype, device));
    }

    /// <summary>[V, dim].</summary>
    public Tensor Weight { get; private set; }

    public Tensor Forward(Tensor ids) => Functional.Embedding(ids, Weight);

    protected override void OnParameterReplaced(string name, Tensor value) => Weight = value;
}
