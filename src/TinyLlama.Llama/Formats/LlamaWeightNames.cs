// The Hugging Face names and shapes of a LLaMA model's weights, the one vocabulary every loader here
// produces and the model consumes. Names as in transformers' LlamaForCausalLM state dict
// (transformers/models/llama/modeling_llama.py); linear weights are [out_features, in_features], as in
// torch.nn.Linear, so y = x W^T.
using TinyLlama.Model;

namespace TinyLlama.Formats;

/// <summary>Weight names and expected shapes for a <see cref="LlamaConfig"/>.</summary>
public static class LlamaWeightNames
{
    /// <summary>Token embedding, [V, C].</summary>
    public const string Embedding = "model.embed_tokens.weight";

    /// <summary>Final RMSNorm weight, [C].</summary>
    public const string FinalNorm = "model.norm.weight";

    /// <summary>LM head, [V, C]; absent when the config ties it to the embedding.</summary>
    public const string LmHead = "lm_head.weight";

    /// <summary>Query projection of layer i, [NH*HS, C].</summary>
    public static string QProj(int layer) => $"model.layers.{layer}.self_attn.q_proj.weight";

    /// <summary>Key projection of layer i, [NKV*HS, C].</summary>
    public static string KProj(int layer) => $"model.layers.{layer}.self_attn.k_proj.weight";

    /// <summary>Value projection of layer i, [NKV*HS, C].</summary>
    public static string VProj(int layer) => $"model.layers.{layer}.self_attn.v_proj.weight";

    /// <summary>Attention output projection of layer i, [C, NH*HS].</summary>
    public static string OProj(int layer) => $"model.layers.{layer}.self_attn.o_proj.weight";

    /// <summary>SwiGLU gate projection of layer i (llama2.c w1), [F, C].</summary>
    public static string GateProj(int layer) => $"model.layers.{layer}.mlp.gate_proj.weight";

    /// <summary>SwiGLU up projection of layer i (llama2.c w3), [F, C].</summary>
    public static string UpProj(int layer) => $"model.layers.{layer}.mlp.up_proj.weight";

    /// <summary>SwiGLU down projection of layer i (llama2.c w2), [C, F].</summary>
    public static string DownProj(int layer) => $"model.layers.{layer}.mlp.down_proj.weight";

    /// <summary>RMSNorm before attention in layer i, [C].</summary>
    public static string InputLayerNorm(int layer) => $"model.layers.{layer}.input_layernorm.weight";

    /// <summary>RMSNorm before the MLP in layer i, [C].</summary>
    public static string PostAttentionLayerNorm(int layer) => $"model.layers.{layer}.post_attention_layernorm.weight";

    /// <summary>
    /// Every weight the model needs, with its shape, in a stable order (embedding, layers, final norm,
    /// LM head unless tied).
    /// </summary>
    public static IReadOnlyList<(string Name, int[] Shape)> Expected(LlamaConfig config)
    {
        int c = config.HiddenSize, f = config.IntermediateSize, v = config.VocabSize;
        int q = config.NumAttentionHeads * config.HeadDim, kv = config.NumKeyValueHeads * config.HeadDim;
        var list = new List<(string, int[])> { (Embedding, [v, c]) };
        for (int i = 0; i < config.NumHiddenLayers; i++)
        {
            list.Add((InputLayerNorm(i), [c]));
            list.Add((QProj(i), [q, c]));
            list.Add((KProj(i), [kv, c]));
            list.Add((VProj(i), [kv, c]));
            list.Add((OProj(i), [c, q]));
            list.Add((PostAttentionLayerNorm(i), [c]));
            list.Add((GateProj(i), [f, c]));
            list.Add((UpProj(i), [f, c]));
            list.Add((DownProj(i), [c, f]));
        }
        list.Add((FinalNorm, [c]));
        if (!config.TieWordEmbeddings) list.Add((LmHead, [v, c]));
        return list;
    }
}
