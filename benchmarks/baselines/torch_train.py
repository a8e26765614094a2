# The PyTorch side of `tinyllama bench train`: eager CPU training of the same LLaMA shape (random weights,
# random tokens, f32), forward + cross-entropy + backward + AdamW, median tokens/s over timed steps after
# a warm-up step. The model is written here (no transformers package): the stories15M/110M presets'
# shapes, Hugging Face's LLaMA layout (RMSNorm, rotate-half RoPE, GQA-ready attention via SDPA when the
# installed PyTorch has it, SwiGLU, tied head as in the presets).
#
#   OMP_NUM_THREADS=2 /usr/bin/python3 benchmarks/baselines/torch_train.py --preset stories15M --batch-size 4 --seq-len 256
import argparse, json, math, statistics, time
import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "stories15M": dict(dim=288, hidden=768, layers=6, heads=6, kv=6, vocab=32000, tied=True),
    "stories110M": dict(dim=768, hidden=2048, layers=12, heads=12, kv=12, vocab=32000, tied=True),
}

class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__(); self.w = nn.Parameter(torch.ones(d)); self.eps = eps
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w

def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.nh, self.nkv = c["dim"], c["heads"], c["kv"]; self.hs = d // self.nh
        self.q = nn.Linear(d, self.nh * self.hs, bias=False); self.k = nn.Linear(d, self.nkv * self.hs, bias=False)
        self.v = nn.Linear(d, self.nkv * self.hs, bias=False); self.o = nn.Linear(self.nh * self.hs, d, bias=False)
        self.gate = nn.Linear(d, c["hidden"], bias=False); self.up = nn.Linear(d, c["hidden"], bias=False); self.down = nn.Linear(c["hidden"], d, bias=False)
        self.n1 = RMSNorm(d); self.n2 = RMSNorm(d)
    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        h = self.n1(x)
        q = self.q(h).view(b, t, self.nh, self.hs).transpose(1, 2)
        k = self.k(h).view(b, t, self.nkv, self.hs).transpose(1, 2)
        v = self.v(h).view(b, t, self.nkv, self.hs).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin; k = k * cos + rotate_half(k) * sin
        if self.nkv != self.nh:
            k = k.repeat_interleave(self.nh // self.nkv, dim=1); v = v.repeat_interleave(self.nh // self.nkv, dim=1)
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hs)
            s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
            y = s.softmax(-1) @ v
        x = x + self.o(y.transpose(1, 2).reshape(b, t, -1))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))

class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.emb = nn.Embedding(c["vocab"], c["dim"]); self.blocks = nn.ModuleList(Block(c) for _ in range(c["layers"])); self.norm = RMSNorm(c["dim"])
        hs = c["dim"] // c["heads"]
        inv = 10000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
        ang = torch.arange(1024, dtype=torch.float64)[:, None] * inv[None, :]
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos().float(), persistent=False); self.register_buffer("sin", ang.sin().float(), persistent=False)
    def forward(self, ids):
        t = ids.shape[1]
        x = self.emb(ids)
        cos, sin = self.cos[:t], self.sin[:t]
        for blk in self.blocks: x = blk(x, cos, sin)
        return self.norm(x) @ self.emb.weight.t()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="stories15M"); ap.add_argument("--batch-size", type=int, default=4); ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5); ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = Llama(PRESETS[a.preset])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, PRESETS[a.preset]["vocab"], (a.batch_size, a.seq_len))
    x, y = ids[:, :-1], ids[:, 1:]
    rates = []
    for s in range(-a.warmup, a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).reshape(-1, PRESETS[a.preset]["vocab"]), y.reshape(-1))
        loss.backward(); opt.step()
        dt = time.perf_counter() - t0
        if s >= 0: rates.append(x.numel() / dt)
    print(json.dumps({"tokens_per_second": round(statistics.median(rates), 2), "threads": torch.get_num_threads(), "torch": torch.__version__}))

if __name__ == "__main__":
    main()
