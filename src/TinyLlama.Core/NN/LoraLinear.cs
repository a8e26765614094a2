// LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021, arXiv:2106.09685, eq. 3)
// as a module that wraps a frozen base Linear, laid out as Hugging Face PEFT's LoraLayer
// (peft/tuners/lora/layer.py):
//
//   y = base(x) + s * (dropout(x) A^T) B^T,    A [r, in], B [out, r], s = alpha / r
//
// where base(x) = x W^T + b is whatever the base layer computes: W may be f32, f64, f16/bf16 or a
// block-quantized tensor (DType.IsQuantized(): byte storage shaped [out, rowBytes]); the wrapper only calls
// the base's own Forward and adds the adapter's term. The one exception is the fused path: when W, A, B
// and x share one full-precision dtype and the base is a plain Linear, Functional.LoraLinear adds the
// adapter's term into x W^T in place (Ops/Functional.Lora.cs), with dropout entering as its keep-mask.
//
// Naming. The wrapper is itself a Linear that registers the base's weight and bias tensors (the same
// objects) under the base's names, and A and B as child Linears "lora_A" and "lora_B". Put in the base's
// place with Module.ReplaceModule, it keeps the checkpoint's names ("...q_proj.weight") and adds PEFT's
// with the adapter name removed ("...q_proj.lora_A.weight", "...q_proj.lora_B.weight"). The base is not a
// child (PEFT's "base_layer" would rename the weight); replacing "weight" or "bias" on the wrapper
// replaces it on the base too, so the two always compute with the same tensors, and the base's
// InputObserver is the wrapper's. (Train/Eval do not reach the base either; a Linear does not use them.)
//
// Initialisation and dtype, as PEFT: A starts with kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in))
// and B with zeros, so a fresh adapter changes nothing; the base's weight and bias are frozen. The adapter
// is f32 over a 16-bit or quantized base (PEFT's autocast_adapter_dtype), f64 over an f64 one. The merged
// weight W + s B A is never formed in the forward pass: the two thin products cost 2 r (in + out)
// multiply-adds per row instead of in * out, and the gradient reaches A and B through them. Merge folds
// s B A into a float W once training is done (a quantized W must be dequantized first).
//
// AdapterEnabled false makes the layer compute base(x) alone (PEFT's disable_adapter()): DPO's reference
// model is the base with every adapter switched off, so no second copy of the weights is needed.
using TinyLlama.Autograd;
using TinyLlama.Tensors;

namespace TinyLlama.NN;

/// <summary>A frozen base <see cref="Linear"/> plus a trainable low-rank adapter: y = base(x) + (alpha / r) (dropout(x) A^T) B^T.</summary>
public sealed class LoraLinear : Linear
{
    private readonly Generator generator;
    private bool merged;

    private LoraLinear(Linear baseLayer, int rank, double alpha, double dropout, Generator generator) : base(baseLayer)
    {
        Base = baseLayer;
        Rank = rank;
        Alpha = alpha;
        Dropout = dropout;
        Scaling = alpha / rank;
        this.generator = generator;
        var dtype = Weight.DType == DType.F64 ? DType.F64 : DType.F32;
        // PEFT's reset_lora_parameters: kaiming_uniform_(A, a=sqrt(5)), which is Linear's default init, and zeros_(B).
        RegisterModule("lora_A", new Linear(InFeatures, rank, false, generator, dtype, Weight.Device));
        RegisterModule("lora_B", new Linear(rank, OutFeatures, false, null, dtype, Weight.Device, init: false));
        Train(baseLayer.Training);
        if (Weight.IsLeaf) Weight.RequiresGrad = false;
        if (Bias is not null && Bias.IsLeaf) Bias.RequiresGrad = false;
    }

    /// <summary>
    /// An adapter of rank <paramref name="rank"/> over <paramref name="baseLayer"/> (any Linear but a LoraLinear):
    /// "lora_A" (in -> r, U(-1/sqrt(in), 1/sqrt(in)) from <paramref name="generator"/>) and "lora_B" (r -> out,
    /// zeros); the base's weight and bias are frozen (RequiresGrad false). The adapter's input goes through
    /// dropout with probability <paramref name="dropout"/> while <see cref="Module.Training"/> is true, with
    /// masks drawn from <paramref name="generator"/> (give the same generator to activation checkpointing so
    /// recomputation sees the same masks). Put the result in the base's place with <see cref="Module.ReplaceModule"/>.
    /// </summary>
    public static LoraLinear Wrap(Linear baseLayer, int rank, double alpha, double dropout = 0.0, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(baseLayer);
        if (baseLayer is LoraLinear) throw new InvalidOperationException("LoraLinear.Wrap: the layer already has a LoRA adapter; merge or remove it first");
        if (rank < 1) throw new ArgumentOutOfRangeException(nameof(rank), rank, "LoraLinear.Wrap: rank must be at least 1");
        if (!double.IsFinite(alpha)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, "LoraLinear.Wrap: alpha must be finite");
        if (!(dropout >= 0 && dropout < 1)) throw new ArgumentOutOfRangeException(nameof(dropout), dropout, "LoraLinear.Wrap: dropout must be in [0, 1)");
        return new LoraLinear(baseLayer, rank, alpha, dropout, generator ?? Generator.Default);
    }

    /// <summary>The wrapped layer; it shares this layer's weight and bias tensors.</summary>
    public Linear Base { get; }

    /// <summary>The down-projection A (weight [r, in]), registered as "lora_A".</summary>
    public Linear LoraA => Child<Linear>("lora_A");

    /// <summary>The up-projection B (weight [out, r]), registered as "lora_B".</summary>
    public Linear LoraB => Child<Linear>("lora_B");

    /// <summary>The rank r.</summary>
    public int Rank { get; }

    /// <summary>lora_alpha.</summary>
    public double Alpha { get; }

    /// <summary>The dropout probability applied to the adapter's input in training.</summary>
    public double Dropout { get; }

    /// <summary>s = alpha / r, the factor on the adapter's output.</summary>
    public double Scaling { get; }

    /// <summary>When false the layer computes base(x) alone, as if the adapter were absent (default true).</summary>
    public bool AdapterEnabled { get; set; } = true;

    /// <summary>The base's observer: it sees each input once, whichever path computes the output.</summary>
    public override Action<Tensor>? InputObserver
    {
        get => Base.InputObserver;
        set => Base.InputObserver = value;
    }

    /// <summary>x [..., in] -> [..., out]: base(x) + s * (dropout(x) A^T) B^T.</summary>
    public override Tensor Forward(Tensor x)
    {
        if (merged) throw new InvalidOperationException("LoraLinear: this adapter was merged into its base; use the layer Merge returned");
        if (!AdapterEnabled) return Base.Forward(x);
        if (CanFuse(x))
        {
            InputObserver?.Invoke(x);
            // One fused op: the adapter's term is added into x W^T in place. Dropout on the adapter's input
            // enters as its keep-mask (drawn as Functional.Dropout draws it), so the backward forms
            // dx = dy W + mask * (s dy B A) in one product.
            var mask = Dropout > 0 && Training ? Functional.DropoutMask(x.shape, Dropout, generator, x.DType, x.Device) : null;
            var fused = Functional.LoraLinear(x, Weight, LoraA.Weight, LoraB.Weight, Scaling, mask);
            return Bias is null ? fused : fused + Bias;
        }
        // Any other base (16-bit, quantized, a subclass) or mixed precision: the base's own product, then the adapter.
        var y = Base.Forward(x);
        return y + AdapterForward(x, y.DType);
    }

    /// <summary>
    /// Folds the adapter into the base weight, W += (alpha / r) B A (computed in the adapter's dtype, then
    /// rounded to W's), and returns the base, to be put back in this layer's place. W is updated in place and
    /// stays frozen; this wrapper must not be used afterwards. A quantized W cannot take the update.
    /// </summary>
    public Linear Merge()
    {
        if (merged) throw new InvalidOperationException("LoraLinear.Merge: this adapter was already merged");
        if (!Weight.DType.IsFloat()) throw new InvalidOperationException($"LoraLinear.Merge: cannot merge into a {Weight.DType.Name()} weight; dequantize it first");
        using (GradMode.NoGrad())
        {
            var delta = Tensor.MatMul(LoraB.Weight, LoraA.Weight) * Scaling; // [out, in]
            Weight.Add_(delta);
        }
        merged = true;
        return Base;
    }

    protected override void OnParameterReplaced(string name, Tensor value)
    {
        base.OnParameterReplaced(name, value);
        if (name is "weight" or "bias") Base.SetParameter(name, value);
    }

    // The fused op takes one full-precision dtype throughout and computes x W^T itself, so it serves a plain
    // Linear base only; mixed precision (autocast, 16-bit or quantized weights) composes separate products.
    private bool CanFuse(Tensor x) =>
        Autocast.Current is null && x.DType is (DType.F32 or DType.F64) && Base.GetType() == typeof(Linear) &&
        Weight.DType == x.DType && LoraA.Weight.DType == x.DType && LoraB.Weight.DType == x.DType;

    /// <summary>s * (dropout(x) A^T) B^T for x [..., in] -> [..., out], in <paramref name="outType"/>.</summary>
    private Tensor AdapterForward(Tensor x, DType outType)
    {
        var h = x.DType == LoraA.Weight.DType ? x : x.To(LoraA.Weight.DType);
        if (Dropout > 0) h = Functional.Dropout(h, Dropout, Training, generator);
        // Scaling the r-wide intermediate instead of the out-wide result: same value, fewer multiplies.
        var d = LoraB.Forward(LoraA.Forward(h) * Scaling); // [..., out]
        return d.DType == outType ? d : d.To(outType);
    }
}
