#!/usr/bin/python3
# Writes a llama2.c checkpoint (run.c's legacy version-0 layout; see llama2c_tools.py's header) with random
# weights (normal, std 0.02; norms 1; shared classifier) in the shape of Karpathy's stories15M or stories110M
# models, for speed comparisons where the trained checkpoints are not on the machine (nothing is downloaded).
# Decoding speed does not depend on the weights' values. The freq_cis tables run.c skips are written as zeros.
# Usage: random_llama2c.py stories15m|stories110m OUT.bin [SEED]
import struct
import sys

import numpy as np

SHAPES = {  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
    "stories15m": (288, 768, 6, 6, 6, 32000, 1024),   # the real model has seq_len 256; 1024 lets pp512 run
    "stories110m": (768, 2048, 12, 12, 12, 32000, 1024),
}

if len(sys.argv) not in (3, 4) or sys.argv[1] not in SHAPES:
    sys.exit("usage: random_llama2c.py stories15m|stories110m OUT.bin [SEED]")
dim, hidden, layers, heads, kv_heads, vocab, seq = SHAPES[sys.argv[1]]
rng = np.random.default_rng(int(sys.argv[3]) if len(sys.argv) == 4 else 0)
head_size = dim // heads
kv_dim = kv_heads * head_size


def normal(*shape):
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).tobytes()


with open(sys.argv[2], "wb") as f:
    f.write(struct.pack("7i", dim, hidden, layers, heads, kv_heads, vocab, seq))
    f.write(normal(vocab, dim))
    f.write(np.ones(layers * dim, np.float32).tobytes())                       # rms_att
    for rows, cols in ((dim, dim), (kv_dim, dim), (kv_dim, dim), (dim, dim)):  # wq, wk, wv, wo
        f.write(normal(layers, rows, cols))
    f.write(np.ones(layers * dim, np.float32).tobytes())                       # rms_ffn
    f.write(normal(layers, hidden, dim))                                       # w1
    f.write(normal(layers, dim, hidden))                                       # w2
    f.write(normal(layers, hidden, dim))                                       # w3
    f.write(np.ones(dim, np.float32).tobytes())                                # rms_final
    f.write(np.zeros(seq * head_size, np.float32).tobytes())                   # freq_cis real and imag
print(f"{sys.argv[2]}: {sys.argv[1]} shape, random weights")
