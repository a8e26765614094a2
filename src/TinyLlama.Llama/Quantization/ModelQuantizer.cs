// Quantizes a whole LLaMA model's weights to llama.cpp blocks (Q4_0 or Q8_0), by round-to-nearest (the
// reference quantizer, QuantType.cs) or by GPTQ (Core/Quantization/Gptq.cs), and returns them under their
// Hugging Face names, ready for a checkpoint writer.
//
// GPTQ runs as the paper's reference implementation does (IST-DASLab/gptq, llama.py llama_sequential): layer
// by layer in order, the calibration sequences' hidden states entering the layer are kept, and within the
// layer the linears are taken in the order their inputs become available,
//     {q_proj, k_proj, v_proj}   (all three read input_layernorm(x))
//     {o_proj}                   (reads the attention output)
//     {gate_proj, up_proj}       (both read post_attention_layernorm(x))
//     {down_proj}                (reads silu(gate) * up)
// For each group the layer is run on every calibration sequence with an InputObserver on the group's first
// linear (the group shares one input) accumulating H = 2/n X X^T; the group's weights are quantized, and
// their f32 weights in the model are replaced by the dequantized values, so that every later group and
// layer is calibrated on the inputs the quantized model will really produce. The layer's outputs then
// become the next layer's inputs. The LM head, when it is quantized, comes last, on the final-norm outputs.
// The embedding is a lookup (no product whose output error GPTQ could weigh), so when it is quantized it
// is always by round-to-nearest. A weight whose rows are not a whole number of blocks stays in f16.
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Tensors;

namespace TinyLlama.Quantization;

/// <summary>How the linear weights are rounded onto the block grid.</summary>
public enum QuantMethod
{
    /// <summary>Round to nearest: the reference quantizer, weight by weight.</summary>
    Rtn,
    /// <summary>GPTQ on calibration data (Frantar et al., 2022).</summary>
    Gptq,
}

/// <summary>How a weight kept apart from the main format (embedding, LM head) is stored.</summary>
public enum WeightFormat
{
    /// <summary>float32, unchanged.</summary>
    F32,
    /// <summary>float16.</summary>
    F16,
    /// <summary>bfloat16.</summary>
    BF16,
    /// <summary>Q8_0 blocks.</summary>
    Q8_0,
    /// <summary>Q4_0 blocks.</summary>
    Q4_0,
}

/// <summary>Settings of a model quantization.</summary>
public sealed record ModelQuantizerOptions
{
    /// <summary>The format of the decoder layers' linear weights.</summary>
    public QuantType Type { get; init; } = QuantType.Q4_0;

    /// <summary>Round to nearest or GPTQ (GPTQ needs calibration sequences).</summary>
    public QuantMethod Method { get; init; } = QuantMethod.Gptq;

    /// <summary>GPTQ: process columns by decreasing Hessian diagonal.</summary>
    public bool ActOrder { get; init; }

    /// <summary>GPTQ: fraction of the mean Hessian diagonal added to it.</summary>
    public double Damp { get; init; } = 0.01;

    /// <summary>GPTQ: columns per lazy-batch block.</summary>
    public int BlockSize { get; init; } = 128;

    /// <summary>GPTQ: how each block's scale is chosen (the format's rule, or searched by OBQ-weighted error).</summary>
    public GptqScaleSearch ScaleSearch { get; init; } = GptqScaleSearch.Mse;

    /// <summary>The token embedding's format (quantized formats use round to nearest).</summary>
    public WeightFormat Embedding { get; init; } = WeightFormat.F32;

    /// <summary>The LM head's format (quantized formats use <see cref="Method"/>); ignored when the head is tied to the embedding.</summary>
    public WeightFormat Head { get; init; } = WeightFormat.F32;
}

/// <summary>Whole-model quantization to llama.cpp block formats.</summary>
public static class ModelQuantizer
{
    /// <summary>
    /// The model's weights under their HF names: linear weights as block tensors [rows, row bytes]
    /// (<see cref="DType.Q4"/> for Q4_0, <see cref="DType.Q8_0"/> for Q8_0), the norms as f32, the
    /// embedding and head as the options say. With GPTQ the model's quantized linear weights are
    /// overwritten by their dequantized values (the calibration of later layers depends on it); round to
    /// nearest leaves the model as it is. <paramref name="progress"/> is called after each step (a decoder
    /// layer, then the LM head if GPTQ quantizes it) with (steps done, steps in all).
    /// </summary>
    public static Dictionary<string, Tensor> Quantize(LlamaForCausalLM model, IReadOnlyList<int[]>? calibration, ModelQuantizerOptions? options = null, Action<int, int>? progress = null)
    {
        var o = options ?? new ModelQuantizerOptions();
        var config = model.Config;
        o.Type.Traits(); // rejects an unknown type
        if (model.Model.EmbedTokens.Weight.DType != DType.F32)
            throw new ArgumentException($"quantize model: expected an f32 model, got {model.Model.EmbedTokens.Weight.DType.Name()} weights");
        var gptq = new GptqOptions { Type = o.Type, Damp = o.Damp, ActOrder = o.ActOrder, BlockSize = o.BlockSize, ScaleSearch = o.ScaleSearch };
        bool useGptq = o.Method == QuantMethod.Gptq;
        if (useGptq) CheckCalibration(calibration, config);
        var head = model.LmHead;
        bool headGptq = useGptq && head is not null && o.Head is WeightFormat.Q4_0 or WeightFormat.Q8_0;
        int layers = config.NumHiddenLayers, steps = layers + (headGptq ? 1 : 0);

        using var noGrad = GradMode.NoGrad();
        var quantized = new Dictionary<string, Tensor>();
        var device = model.Model.EmbedTokens.Weight.Device;
        var rope = new RotaryEmbedding(config, DType.F32, device);
        // Hidden states (1, T, C) entering the current layer, one per calibration sequence.
        var hidden = useGptq ? calibration!.Select(ids => model.Model.EmbedTokens.Forward(Tensor.FromArray(ids, [1, ids.Length], device))).ToList() : [];
        for (int i = 0; i < layers; i++)
        {
            var layer = model.Model.Layers[i];
            int index = i;
            foreach (var group in Groups(layer, i))
            {
                if (!useGptq)
                {
                    foreach (var (name, linear) in group) quantized[name] = RoundToNearest(linear.Weight, o.Type, name);
                    continue;
                }
                var hessian = Calibrate(group[0].Linear, () => { foreach (var h in hidden) layer.Forward(h, rope, 0, null, index); });
                foreach (var (name, linear) in group) quantized[name] = QuantizeInPlace(linear, hessian, gptq, name);
            }
            if (useGptq) hidden = hidden.Select(h => layer.Forward(h, rope, 0, null, index)).ToList();
            progress?.Invoke(i + 1, steps);
        }
        if (head is not null && o.Head is WeightFormat.Q4_0 or WeightFormat.Q8_0)
        {
            var type = o.Head == WeightFormat.Q4_0 ? QuantType.Q4_0 : QuantType.Q8_0;
            if (headGptq)
            {
                var hessian = Calibrate(head, () => { foreach (var h in hidden) head.Forward(model.Model.Norm.Forward(h)); });
                quantized[LlamaWeightNames.LmHead] = QuantizeInPlace(head, hessian, gptq with { Type = type }, LlamaWeightNames.LmHead);
                progress?.Invoke(steps, steps);
            }
            else quantized[LlamaWeightNames.LmHead] = RoundToNearest(head.Weight, type, LlamaWeightNames.LmHead);
        }

        return Store(model, quantized, WeightFormat.F32, o.Embedding, o.Head);
    }

    /// <summary>
    /// The model's weights under their HF names with no block quantization of the decoder linears: those in
    /// <paramref name="linears"/> (F32, F16 or BF16), the embedding and the LM head in their own formats
    /// (Q8_0/Q4_0 by round to nearest), the norms in f32: the rule <see cref="Quantize"/> keeps for the weights
    /// it does not quantize. The model is left as it is.
    /// </summary>
    public static Dictionary<string, Tensor> Convert(LlamaForCausalLM model, WeightFormat linears, WeightFormat embedding, WeightFormat head)
    {
        if (linears is not (WeightFormat.F32 or WeightFormat.F16 or WeightFormat.BF16))
            throw new ArgumentException($"convert model: the linears' format must be F32, F16 or BF16, got {linears} (use Quantize for blocks)", nameof(linears));
        using var noGrad = GradMode.NoGrad();
        return Store(model, [], linears, embedding, head);
    }

    /// <summary>
    /// The one keep rule: every parameter in the model's own order, those in <paramref name="quantized"/> as
    /// given, the token embedding in <paramref name="embedding"/>'s format, the LM head in <paramref name="head"/>'s,
    /// the other matrices (decoder linears) in <paramref name="linears"/>'s, and the vectors (RMSNorm gains) in f32.
    /// </summary>
    private static Dictionary<string, Tensor> Store(LlamaForCausalLM model, Dictionary<string, Tensor> quantized,
        WeightFormat linears, WeightFormat embedding, WeightFormat head)
    {
        var result = new Dictionary<string, Tensor>();
        foreach (var (name, p) in model.NamedParameters())
        {
            if (quantized.TryGetValue(name, out var q)) { result[name] = q; continue; }
            var format = name == LlamaWeightNames.Embedding ? embedding : name == LlamaWeightNames.LmHead ? head
                : p.Rank == 2 ? linears : WeightFormat.F32;
            result[name] = format switch
            {
                WeightFormat.F32 => Tensor.FromArray(p.ToArray<float>(), p.Shape),
                WeightFormat.F16 => ToF16(p),
                WeightFormat.BF16 => p.Detach().To(DType.BF16),
                WeightFormat.Q8_0 => RoundToNearest(p, QuantType.Q8_0, name),
                _ => RoundToNearest(p, QuantType.Q4_0, name),
            };
        }
        return result;
    }

    /// <summary>The decoder layer's linears, grouped by the input they read, in the order those inputs exist.</summary>
    private static List<(string Name, Linear Linear)>[] Groups(LlamaDecoderLayer layer, int i) =>
    [
        [(LlamaWeightNames.QProj(i), layer.SelfAttn.QProj), (LlamaWeightNames.KProj(i), layer.SelfAttn.KProj), (LlamaWeightNames.VProj(i), layer.SelfAttn.VProj)],
        [(LlamaWeightNames.OProj(i), layer.SelfAttn.OProj)],
        [(LlamaWeightNames.GateProj(i), layer.Mlp.GateProj), (LlamaWeightNames.UpProj(i), layer.Mlp.UpProj)],
        [(LlamaWeightNames.DownProj(i), layer.Mlp.DownProj)],
    ];

    /// <summary>H = 2/n X X^T of the inputs <paramref name="linear"/> sees while <paramref name="run"/> runs.</summary>
    private static double[] Calibrate(Linear linear, Action run)
    {
        var accumulator = new HessianAccumulator(linear.InFeatures);
        var previous = linear.InputObserver;
        linear.InputObserver = previous + accumulator.Add;
        try { run(); }
        finally { linear.InputObserver = previous; }
        return accumulator.Hessian();
    }

    /// <summary>GPTQ blocks of a linear's weight; the weight itself becomes their dequantized values.</summary>
    private static Tensor QuantizeInPlace(Linear linear, double[] hessian, GptqOptions options, string name)
    {
        int rows = linear.OutFeatures, k = linear.InFeatures;
        if (k % options.Type.Traits().BlockSize != 0) return ToF16(linear.Weight);
        byte[] blocks;
        try { blocks = Gptq.Quantize(linear.Weight.ToArray<float>(), rows, k, hessian, options); }
        catch (ArgumentException e) { throw new ArgumentException($"quantize {name}: {e.Message}", e); }
        var traits = options.Type.Traits();
        int rowBytes = blocks.Length / rows;
        var values = new float[rows * k];
        for (int r = 0; r < rows; r++) traits.Dequantize(blocks.AsSpan(r * rowBytes, rowBytes), values.AsSpan(r * k, k));
        linear.Weight.CopyFrom_(Tensor.FromArray(values, [rows, k], linear.Weight.Device));
        return TinyLlama.Quantization.Quantize.FromBytes(blocks, rows, options.Type.ToDType());
    }

    /// <summary>The reference quantizer's blocks of w [rows, K].</summary>
    private static Tensor RoundToNearest(Tensor w, QuantType type, string name)
    {
        var traits = type.Traits();
        int rows = w.Size(0), k = w.Size(1);
        if (k % traits.BlockSize != 0) return ToF16(w);
        try
        {
            int rowBytes = traits.RowBytes(k);
            var values = w.ToArray<float>();
            var blocks = new byte[rows * rowBytes];
            for (int r = 0; r < rows; r++) traits.Quantize(values.AsSpan(r * k, k), blocks.AsSpan(r * rowBytes, rowBytes));
            return TinyLlama.Quantization.Quantize.FromBytes(blocks, rows, type.ToDType());
        }
        catch (ArgumentException e) { throw new ArgumentException($"quantize {name}: {e.Message}", e); }
    }

    /// <summary>
    /// A weight whose rows are not a whole number of blocks (stories260K's feed-forward width is 172) cannot be
    /// Q4_0 or Q8_0; it is kept in f16, as llama-quantize falls back for formats that cannot hold a row.
    /// </summary>
    private static Tensor ToF16(Tensor w) => Tensor.FromArray(w.ToArray<Half>(), w.Shape);

    /// <summary>Throws unless there is at least one calibration sequence and each is 1..max_position_embeddings valid ids.</summary>
    private static void CheckCalibration(IReadOnlyList<int[]>? calibration, LlamaConfig config)
    {
        if (calibration is null || calibration.Count == 0)
            throw new ArgumentException("quantize model: GPTQ needs at least one calibration sequence");
        for (int s = 0; s < calibration.Count; s++)
        {
            var ids = calibration[s];
            if (ids is null || ids.Length == 0 || ids.Length > config.MaxPositionEmbeddings)
                throw new ArgumentException($"quantize model: calibration sequence {s} has {ids?.Length ?? 0} tokens, expected 1 to {config.MaxPositionEmbeddings}");
            for (int t = 0; t < ids.Length; t++)
                if ((uint)ids[t] >= (uint)config.VocabSize)
                    throw new ArgumentException($"quantize model: calibration sequence {s}, position {t}: token {ids[t]} is outside the vocabulary [0, {config.VocabSize})");
        }
    }
}
