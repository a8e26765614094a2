#!/usr/bin/python3
# Two small file tools for benchmarks/interop/llama_cpp.sh (a cross-check script, not part of the tests).
#
#   pad-ffn IN.bin OUT.bin MULTIPLE   rewrite a llama2.c checkpoint with its feed-forward width padded with
#                                     zero units up to a multiple of MULTIPLE. A zero unit has zero gate and
#                                     up rows and a zero down column, so silu(0) * 0 adds nothing: the padded
#                                     model computes exactly the same function. llama-quantize needs every
#                                     row length to be a multiple of 32 for q4_0/q8_0, and stories260K's
#                                     width is 172.
#   from-hf DIR OUT.bin               a Hugging Face LLaMA directory (config.json + one f32 model.safetensors,
#                                     as `tinyllama demo` and `sft` write) as a llama2.c checkpoint, so that
#                                     llama-convert-llama2c-to-ggml can read a model trained here. Safetensors:
#                                     an 8-byte little-endian header length, a JSON header {name: {dtype,
#                                     shape, data_offsets}}, then the data. HF stores the q and k rows of
#                                     each head in rotate-half order (first all real parts, then all
#                                     imaginary ones); llama2.c (Meta's layout) interleaves the pairs, so
#                                     the inverse of transformers' convert_llama_weights_to_hf permute is
#                                     applied: row 2i+j of a head takes HF row j * HS/2 + i.
#   vocab N OUT.bin                   a llama2.c tokenizer.bin of N pieces in the Llama layout (0 <unk>,
#                                     1 <s>, 2 </s>, 3..258 the bytes <0x00>..<0xFF>, then " p259", " p260",
#                                     ...): stories260K's own 512-piece vocabulary is not in ../shared, and
#                                     llama-convert-llama2c-to-ggml needs one. Texts printed by the two programs
#                                     then spell out the same token ids.
#
# llama2.c checkpoint layout (run.c, legacy version 0): seven int32 (dim, hidden_dim, n_layers, n_heads,
# n_kv_heads, vocab_size (negative: separate classifier), seq_len), then f32 arrays: token embedding [V, C],
# rms_att [L, C], wq [L, C, C], wk [L, KV, C], wv [L, KV, C], wo [L, C, C], rms_ffn [L, C],
# w1 [L, F, C], w2 [L, C, F], w3 [L, F, C], rms_final [C], freq_cis_real and imag [seq_len, HS / 2] each,
# and the classifier [V, C] when vocab_size < 0.
import json
import struct
import sys

import numpy as np


def pad_ffn(src, dst, multiple):
    with open(src, "rb") as f:
        header = struct.unpack("7i", f.read(28))
        data = np.frombuffer(f.read(), dtype=np.float32)
    dim, hidden, layers, heads, kv_heads, vocab, seq = header
    shared = vocab > 0
    vocab = abs(vocab)
    head_size = dim // heads
    kv_dim = kv_heads * head_size
    sizes = [("emb", vocab * dim), ("rms_att", layers * dim), ("wq", layers * dim * dim),
             ("wk", layers * kv_dim * dim), ("wv", layers * kv_dim * dim), ("wo", layers * dim * dim),
             ("rms_ffn", layers * dim), ("w1", layers * hidden * dim), ("w2", layers * dim * hidden),
             ("w3", layers * hidden * dim), ("rms_final", dim), ("freq", seq * head_size)]
    if not shared:
        sizes.append(("wcls", vocab * dim))
    parts, at = {}, 0
    for name, n in sizes:
        parts[name] = data[at:at + n]
        at += n
    if at != data.size:
        sys.exit(f"{src}: {data.size} floats after the header, the layout needs {at}")
    new_hidden = -(-hidden // multiple) * multiple
    w1 = np.zeros((layers, new_hidden, dim), np.float32)
    w3 = np.zeros((layers, new_hidden, dim), np.float32)
    w2 = np.zeros((layers, dim, new_hidden), np.float32)
    w1[:, :hidden] = parts["w1"].reshape(layers, hidden, dim)
    w3[:, :hidden] = parts["w3"].reshape(layers, hidden, dim)
    w2[:, :, :hidden] = parts["w2"].reshape(layers, dim, hidden)
    parts["w1"], parts["w2"], parts["w3"] = w1.ravel(), w2.ravel(), w3.ravel()
    with open(dst, "wb") as f:
        f.write(struct.pack("7i", dim, new_hidden, layers, heads, kv_heads, vocab if shared else -vocab, seq))
        for name, _ in sizes:
            f.write(parts[name].astype(np.float32).tobytes())
    print(f"{dst}: feed-forward width {hidden} -> {new_hidden} (zero units)")


def from_hf(src, dst):
    with open(f"{src}/config.json") as f:
        cfg = json.load(f)
    with open(f"{src}/model.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    def get(name):
        t = header[name]
        if t["dtype"] != "F32":
            sys.exit(f"{src}: {name} is {t['dtype']}, this tool reads F32 checkpoints")
        a, b = t["data_offsets"]
        return np.frombuffer(data[a:b], dtype=np.float32).reshape(t["shape"])
    dim, hidden, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    vocab, seq = cfg["vocab_size"], cfg["max_position_embeddings"]
    head_size = dim // heads
    if cfg.get("rope_theta", 10000.0) != 10000.0 or cfg.get("rope_scaling") or abs(cfg.get("rms_norm_eps", 1e-5) - 1e-5) > 1e-12:
        sys.exit(f"{src}: llama2.c assumes rope_theta 10000, no RoPE scaling and rms_norm_eps 1e-5")
    shared = bool(cfg.get("tie_word_embeddings")) or "lm_head.weight" not in header

    def interleave(w, n):  # HF rotate-half rows -> Meta's interleaved pairs, head by head
        return w.reshape(n, 2, head_size // 2, dim).transpose(0, 2, 1, 3).reshape(n * head_size, dim)

    def layer(fmt, fix=lambda w: w):
        return np.stack([fix(get(fmt.format(i))) for i in range(layers)])

    inv = 10000.0 ** (-np.arange(0, head_size, 2, dtype=np.float64) / head_size)
    angles = np.outer(np.arange(seq), inv)
    parts = [get("model.embed_tokens.weight"),
             layer("model.layers.{}.input_layernorm.weight"),
             layer("model.layers.{}.self_attn.q_proj.weight", lambda w: interleave(w, heads)),
             layer("model.layers.{}.self_attn.k_proj.weight", lambda w: interleave(w, kv_heads)),
             layer("model.layers.{}.self_attn.v_proj.weight"),
             layer("model.layers.{}.self_attn.o_proj.weight"),
             layer("model.layers.{}.post_attention_layernorm.weight"),
             layer("model.layers.{}.mlp.gate_proj.weight"),
             layer("model.layers.{}.mlp.down_proj.weight"),
             layer("model.layers.{}.mlp.up_proj.weight"),
             get("model.norm.weight"), np.cos(angles), np.sin(angles)]
    if not shared:
        parts.append(get("lm_head.weight"))
    with open(dst, "wb") as f:
        f.write(struct.pack("7i", dim, hidden, layers, heads, kv_heads, vocab if shared else -vocab, seq))
        for p in parts:
            f.write(np.ascontiguousarray(p, dtype=np.float32).tobytes())
    print(f"{dst}: llama2.c checkpoint of {src} (C={dim}, F={hidden}, L={layers}, heads {heads}/{kv_heads}, V={vocab}, {'tied' if shared else 'untied'})")


def vocab(n, dst):
    pieces = [b"<unk>", b"<s>", b"</s>"] + [b"<0x%02X>" % b for b in range(256)]
    pieces += [b" p%d" % i for i in range(len(pieces), n)]
    with open(dst, "wb") as f:
        f.write(struct.pack("I", max(len(p) for p in pieces)))
        for i, p in enumerate(pieces[:n]):
            f.write(struct.pack("fI", -float(i), len(p)))
            f.write(p)
    print(f"{dst}: {n} pieces")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "pad-ffn":
        pad_ffn(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "from-hf":
        from_hf(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "vocab":
        vocab(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit("usage: llama2c_tools.py pad-ffn IN.bin OUT.bin MULTIPLE | from-hf DIR OUT.bin | vocab N OUT.bin")
