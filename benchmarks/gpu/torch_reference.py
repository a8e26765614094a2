#!/usr/bin/env python3
"""PyTorch reference timings for benchmarks/gpu/KernelBench.

Times torch.matmul (cuBLAS) and torch.nn.functional.scaled_dot_product_attention at the shapes KernelBench
times, with CUDA events (median of warm runs), and writes
    {"device": ..., "torch": ..., "results": [{"key": "gemm f32 1024", "ms": 0.123}, ...]}
where each key matches a KernelBench row. f32 matmuls run without TF32 (the ILGPU f32 kernels use none);
16-bit matmuls take and return f16/bf16 tensors. Attention is timed in f32 (the dtype of the ILGPU kernels)
and, for context, in bf16 (where SDPA can use its FlashAttention backend). Backward times
torch.autograd.grad of the attention output with a fixed upstream gradient, graph built outside the timing.
Causal masks: SDPA aligns is_causal top-left, KernelBench's kernels bottom-right; with S == T, as here,
they coincide.

    python3 torch_reference.py --out torch_reference.json [--quick] [--warmup 3] [--iters 20]
"""
import argparse
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F


def time_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gemm_rows(sizes, warmup, iters):
    rows = []
    for n in sizes:
        for name, dtype in (("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)):
            a = (torch.rand(n, n, device="cuda") * 2 - 1).to(dtype)
            b = (torch.rand(n, n, device="cuda") * 2 - 1).to(dtype)
            c = torch.empty(n, n, device="cuda", dtype=dtype)
            ms = time_ms(lambda: torch.matmul(a, b, out=c), warmup, iters)
            rows.append({"key": f"gemm {name} {n}", "ms": ms})
    return rows


def attention_rows(shapes, d, warmup, iters):
    rows = []
    for b, h, t, causal in shapes:
        shape = f"B={b} H={h} T={t} S={t} D={d}" + (" causal" if causal else "")
        for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            q, k, v, g = (torch.randn(b, h, t, d, device="cuda", dtype=dtype) for _ in range(4))
            scale = 1.0 / math.sqrt(d)
            fwd = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale), warmup, iters)
            qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
            out = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal, scale=scale)
            bwd = time_ms(lambda: torch.autograd.grad(out, (qg, kg, vg), g, retain_graph=True), warmup, iters)
            rows.append({"key": f"attention fwd {name} {shape}", "ms": fwd})
            rows.append({"key": f"attention bwd {name} {shape}", "ms": bwd})
            del out, qg, kg, vg
            torch.cuda.empty_cache()
    return rows


def lora_rows(m, c, r, warmup, iters):
    # PEFT's LoRA forward with the low-rank input precomputed, as KernelBench's "lora" rows time it:
    # y = x W^T + s u B^T (two cuBLAS calls and an add), next to the plain x W^T.
    x = torch.rand(m, c, device="cuda") * 2 - 1
    w = torch.rand(c, c, device="cuda") * 2 - 1
    u = torch.rand(m, r, device="cuda") * 2 - 1
    b = torch.rand(c, r, device="cuda") * 2 - 1
    base = time_ms(lambda: x @ w.t(), warmup, iters)
    lora = time_ms(lambda: torch.addmm(x @ w.t(), u, b.t(), alpha=2.0), warmup, iters)
    return [{"key": f"lora base f32 {m}x{c}x{c}", "ms": base}, {"key": f"lora f32 {m}x{c}x{c} r{r}", "ms": lora}]


def q4_rows(k, prefill, warmup, iters):
    # PyTorch has no Q4_0 kernel: the int4 rows are compared with what it runs without quantization, the f16
    # matmul (cuBLAS) at the same shape: a mat-vec for one decoded token (2 bytes per weight read, against
    # Q4_0's 0.5625) and a prefill of `prefill` tokens.
    rows = []
    w = (torch.rand(k, k, device="cuda") * 2 - 1).half()
    for m, kind in ((1, "matvec"), (prefill, "matmul")):
        x = (torch.rand(m, k, device="cuda") * 2 - 1).half()
        ms = time_ms(lambda: x @ w.t(), warmup, iters)
        rows.append({"key": f"q4 {kind} {m}x{k}x{k}", "ms": ms})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="the tiny shapes of KernelBench --quick")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("torch_reference.py: no CUDA device", file=sys.stderr)
        return 3
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)

    sizes = [64] if args.quick else [1024, 2048, 4096]
    shapes = [(1, 2, 64, True)] if args.quick else [(1, 12, 512, True), (2, 16, 1024, True), (4, 16, 2048, True), (4, 16, 2048, False)]
    lm, lc = (64, 64) if args.quick else (4096, 768)
    results = gemm_rows(sizes, args.warmup, args.iters) + attention_rows(shapes, 64, args.warmup, args.iters) + lora_rows(lm, lc, 16, args.warmup, args.iters)
    results += q4_rows(64, 5, args.warmup, args.iters) if args.quick else q4_rows(4096, 512, args.warmup, args.iters)
    doc = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    for row in results:
        print(f"{row['key']:<52} {row['ms']:10.4f} ms")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
