#!/usr/bin/python3
# Writes a Hugging Face LLaMA directory with random weights (normal, std 0.02; norms 1) in the stories110M
# shape (C 768, 12 layers, 12 heads, FFN 2048, V 32000, context 1024) or, with SHAPE = tinyllama-1.1b, the
# TinyLlama-1.1B shape (C 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632, V 32000, context 2048; 4.4 GB of
# f32), for measuring memory and speed of quantized models where no trained checkpoint of that size is on the
# machine. safetensors layout: an
# 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the data.
# Usage: random_hf.py OUT_DIR TOKENIZER_MODEL [stories110m|tinyllama-1.1b]
import json, os, shutil, struct, sys
import numpy as np

out, tokenizer = sys.argv[1], sys.argv[2]
preset = sys.argv[3] if len(sys.argv) > 3 else "stories110m"
C, L, H, KV, F, V, T = {"stories110m": (768, 12, 12, 12, 2048, 32000, 1024),
                        "tinyllama-1.1b": (2048, 22, 32, 4, 5632, 32000, 2048)}[preset]
HS = C // H
shapes = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,), "lm_head.weight": (V, C)}
for i in range(L):
    p = f"model.layers.{i}."
    shapes |= {p + "self_attn.q_proj.weight": (C, C), p + "self_attn.k_proj.weight": (KV * HS, C), p + "self_attn.v_proj.weight": (KV * HS, C),
               p + "self_attn.o_proj.weight": (C, C), p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
               p + "mlp.down_proj.weight": (C, F), p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,)}
rng = np.random.default_rng(0)
header, offset = {}, 0
for name, shape in shapes.items():
    n = int(np.prod(shape)) * 4
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
    offset += n
blob = json.dumps(header).encode()
blob += b" " * (-len(blob) % 8)
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob)
    for name, shape in shapes.items():
        w = np.ones(shape, np.float32) if name.endswith("norm.weight") else (rng.standard_normal(shape, dtype=np.float32) * 0.02)
        f.write(w.tobytes())
config = {"vocab_size": V, "hidden_size": C, "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": H,
          "num_key_value_heads": KV, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
          "max_position_embeddings": T, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
          "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "torch_dtype": "float32"}
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
shutil.copy(tokenizer, os.path.join(out, "tokenizer.model"))
print(f"{out}: {sum(int(np.prod(s)) for s in shapes.values()):,} parameters")
