// Putting LoRA adapters (Hu et al., 2021, arXiv:2106.09685) on a LLaMA model, and taking them off.
//
// Apply does what PEFT's get_peft_model does for a LoraConfig with bias = "none": every linear layer
// whose dotted name ends in a target ("model.layers.3.self_attn.q_proj" ends in "q_proj") is replaced by
// a LoraLinear wrapping it (NN/LoraLinear.cs; Module.ReplaceModule), and every base parameter (embeddings,
// norms, lm_head, every base weight) is frozen, so that only the lora_A and lora_B weights train. The
// wrapper keeps the base's parameter names, so the model's names only gain "...lora_A.weight" and
// "...lora_B.weight". Merge is PEFT's merge_and_unload: each adapter is folded into its weight,
// W += (alpha / r) B A, and the base layer is put back, which leaves a plain model with Hugging Face's
// parameter names, ready to be saved as an ordinary checkpoint. Remove (PEFT's unload) puts the bases
// back without merging.
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Tensors;

namespace TinyLlama.Training.Lora;

/// <summary>Applying, listing and merging LoRA adapters on a <see cref="LlamaForCausalLM"/>.</summary>
public static class Lora
{
    /// <summary>
    /// Freezes every parameter of <paramref name="model"/> and attaches a LoRA adapter (rank, alpha and
    /// dropout from <paramref name="config"/>) to each targeted linear layer of every decoder layer. A is
    /// initialised from <paramref name="generator"/> in module order (layer 0's q, k, v, o, gate, up,
    /// down, then layer 1's ...), B with zeros, so the model's output is unchanged; dropout masks are
    /// drawn from the same generator. Returns the adapted layers (now in the model) by dotted name.
    /// </summary>
    public static IReadOnlyList<(string Name, LoraLinear Layer)> Apply(LlamaForCausalLM model, LoraConfig config, Generator generator)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(generator);
        var targets = TargetLayers(model, config);
        var existing = AdaptedLayers(model);
        if (existing.Count > 0) throw new InvalidOperationException($"the model already has LoRA adapters (e.g. on {existing[0].Name}); merge or remove them first");
        foreach (var p in model.Parameters())
            if (p.IsLeaf) p.RequiresGrad = false;
        var adapted = new List<(string, LoraLinear)>(targets.Count);
        foreach (var (name, layer) in targets)
        {
            var wrapper = LoraLinear.Wrap(layer, config.Rank, config.Alpha, config.Dropout, generator);
            model.ReplaceModule(name, wrapper);
            adapted.Add((name, wrapper));
        }
        return adapted;
    }

    /// <summary>
    /// The linear layers <paramref name="config"/> targets, by dotted name, in module order: those under
    /// "model.layers." whose last name segment is one of the targets (PEFT's suffix match).
    /// </summary>
    public static IReadOnlyList<(string Name, Linear Layer)> TargetLayers(LlamaForCausalLM model, LoraConfig config)
    {
        var targets = config.CanonicalTargets();
        var found = new List<(string, Linear)>();
        var matched = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, module) in model.NamedModules())
        {
            if (module is not Linear linear || !name.StartsWith("model.layers.", StringComparison.Ordinal)) continue;
            string last = name[(name.LastIndexOf('.') + 1)..];
            if (!targets.Contains(last, StringComparer.Ordinal)) continue;
            found.Add((name, linear));
            matched.Add(last);
        }
        var missing = targets.Where(t => !matched.Contains(t)).ToList();
        if (missing.Count > 0) throw new ArgumentException($"LoRA target modules {string.Join(", ", missing)} not found in the model");
        return found;
    }

    /// <summary>The adapted layers currently in the model, by dotted name, in module order.</summary>
    public static IReadOnlyList<(string Name, LoraLinear Layer)> AdaptedLayers(Module model)
    {
        var list = new List<(string, LoraLinear)>();
        foreach (var (name, module) in model.NamedModules())
            if (module is LoraLinear lora) list.Add((name, lora));
        return list;
    }

    /// <summary>The parameters that will train: those with RequiresGrad (after <see cref="Apply"/>, exactly every lora_A and lora_B weight).</summary>
    public static IReadOnlyList<Tensor> TrainableParameters(Module model) =>
        model.NamedParameters().Where(p => p.Value.RequiresGrad).Select(p => p.Value).ToList();

    /// <summary>
    /// The adapter weights by the model's dotted names ("model.layers.0.self_attn.q_proj.lora_A.weight"),
    /// the tensors themselves (not copies).
    /// </summary>
    public static Dictionary<string, Tensor> AdapterStateDict(Module model)
    {
        var dict = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, layer) in AdaptedLayers(model))
        {
            dict[name + ".lora_A.weight"] = layer.LoraA.Weight;
            dict[name + ".lora_B.weight"] = layer.LoraB.Weight;
        }
        return dict;
    }

    /// <summary>
    /// Folds every adapter into its base weight (W += (alpha / r) B A) and puts the base layer back, so the
    /// model has Hugging Face's usual parameter names again. Base parameters stay frozen. Nothing is changed
    /// when a base weight is not floating point (quantized). Returns how many layers were merged.
    /// </summary>
    public static int Merge(Module model)
    {
        var layers = AdaptedLayers(model); // collected first: merging edits the module tree
        foreach (var (name, layer) in layers)
            if (!layer.Weight.DType.IsFloat())
                throw new InvalidOperationException($"cannot merge the LoRA adapter of {name} into its {layer.Weight.DType.Name()} weight; dequantize the model first");
        foreach (var (name, layer) in layers) model.ReplaceModule(name, layer.Merge());
        return layers.Count;
    }

    /// <summary>
    /// Switches every adapter of <paramref name="model"/> off (PEFT's disable_adapter()) until the returned
    /// scope is disposed, which restores each adapter's previous setting: inside it the model computes with
    /// its base weights alone. DPO computes its reference log-probabilities this way.
    /// </summary>
    public static IDisposable Disabled(Module model)
    {
        var layers = AdaptedLayers(model);
        var was = new bool[layers.Count];
        for (int i = 0; i < layers.Count; i++)
        {
            was[i] = layers[i].Layer.AdapterEnabled;
            layers[i].Layer.AdapterEnabled = false;
        }
        return new Restore(() =>
        {
            for (int i = 0; i < layers.Count; i++) layers[i].Layer.AdapterEnabled = was[i];
        });
    }

    private sealed class Restore(Action undo) : IDisposable
    {
        private Action? undo = undo;

        public void Dispose()
        {
            undo?.Invoke();
            undo = null;
        }
    }

    /// <summary>Removes every adapter without merging (PEFT's unload): the base layers go back. Returns how many layers had one.</summary>
    public static int Remove(Module model)
    {
        var layers = AdaptedLayers(model);
        foreach (var (name, layer) in layers) model.ReplaceModule(name, layer.Base);
        return layers.Count;
    }
}
