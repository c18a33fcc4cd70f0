"""Model-only training-step benchmark of the Core issue: tiny 4M, batch 8, 128 input + 128 target tokens.

Model: tiny preset, GELU with biases (dim 384, 6+6 layers, 6 heads), inputs {rgb@224, tok_rgb@224,
tok_depth@224, caption, det}, targets {tok_rgb@224, tok_depth@224, caption, det}, decoder embeddings
tied (90.25M parameters, as the official trainer builds it), AdamW (open4m.optim.adamw: torch's fused
AdamW step) with the encoder's token embeddings returning sparse gradients, as `open4m train` runs in
one process (FourM.use_sparse_embedding_grads: the same update). Each precision runs in its own
process so the peak memory belongs to it alone: "peak mem" is that process's peak RSS (ru_maxrss, in
GB of 2^30 bytes), libtorch, the model, the optimizer state and every step included, as the official
figures were measured. It is read after the timed steps, before the harness's own work: the
FlopCounterMode step (its imports of torch's compiler stack hold ~80 MB) and the matmul ceiling. The child process
runs with MKL's buffer cache off, as every process that imports open4m before torch does (see
open4m/__init__.py).

Run:  python benchmarks/train_step.py [--steps 12] [--warmup 3] [--variants fp32,fp32+sib,bf16,bf16+sib]
Prints: median step time (forward + backward + optimizer step), tokens/s, peak memory, achieved GFLOP/s
(FLOPs counted by torch's FlopCounterMode on one step) next to the 2048^3 matmul ceiling measured in
the same run, and the speed-up over the official step in the same precision (its measured times, scaled
by the ratio of its fp32 matmul ceiling to this run's). Variants: fp32 or bf16 autocast; "+sib" applies
the AdamW step inside backward (open4m.optim.StepInBackward: same update, gradients freed as they are
used).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

DOMAINS_IN = ["rgb@224", "tok_rgb@224", "tok_depth@224", "caption", "det"]
DOMAINS_OUT = ["tok_rgb@224", "tok_depth@224", "caption", "det"]
# Fixed token budgets per sample (sum 128 each); sequences spend their budget as one span.
INPUTS = {"rgb@224": 40, "tok_rgb@224": 24, "tok_depth@224": 24, "caption": 20, "det": 20}
TARGETS = {"tok_rgb@224": 40, "tok_depth@224": 40, "caption": 24, "det": 24}
BATCH, N_IN, N_OUT = 8, 128, 128
# The official implementation's step on this machine (quiet, median of several runs; the Core issue) and the
# 2048^3 fp32 matmul ceiling those runs measured: its times are scaled by (that ceiling / this run's fp32 ceiling)
# to compare with a run on a faster or slower moment of the machine.
OFFICIAL_STEP_S = {"fp32": (2.1, 2.6), "bf16": (1.72, 1.80)}
OFFICIAL_FP32_CEILING = 200.0


def make_batch(seed: int = 0, device: str = "cpu", batch_size: int = BATCH) -> dict:
    """A batch in the official layout with the budgets above and random positions/ids per sample."""
    from open4m import modalities
    from open4m.batch import attention_codes

    g = torch.Generator().manual_seed(seed)
    batch = {}
    for name in DOMAINS_IN:
        mod = modalities.get(name)
        n = mod.num_positions
        inp = torch.zeros(batch_size, n, dtype=torch.bool)
        tgt = torch.zeros(batch_size, n, dtype=torch.bool)
        if mod.kind == "pixels":
            tensor = torch.randn(batch_size, 3, mod.image_size, mod.image_size, generator=g)
        elif mod.kind == "image_tokens":
            tensor = torch.randint(0, mod.vocab_size, (batch_size, n), generator=g)
        else:
            tensor = torch.randint(4300, mod.vocab_size, (batch_size, n), generator=g).to(torch.int32)
        for b in range(batch_size):
            if mod.is_image:
                perm = torch.randperm(n, generator=g)
                inp[b, perm[: INPUTS[name]]] = True
                tgt[b, perm[INPUTS[name]: INPUTS[name] + TARGETS.get(name, 0)]] = True
            else:  # inputs at [0, k), targets at [input budget, ...) as the official layout
                k = INPUTS[name]
                inp[b, :k] = True
                tgt[b, k: k + TARGETS[name] + 1] = True  # +1: a sequence target loses one token to the shift
        batch[name] = {"tensor": tensor, "input_mask": ~inp, "target_mask": ~tgt,
                       "decoder_attention_mask": attention_codes(tgt, mod.kind)}
    return {name: {k: v.to(device) for k, v in d.items()} for name, d in batch.items()}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(dtype: torch.dtype, device: str = "cpu", reps: int = 5) -> float:
    n = 2048 if device == "cpu" else 8192
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    times = []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


def run_one(variant: str, steps: int, warmup: int, device: str = "cpu", batch_size: int = BATCH) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from open4m.model import FourM, preset
    from open4m.optim import StepInBackward, adamw
    from open4m.runtime import tune_allocator

    tune_allocator()
    torch.manual_seed(0)
    model = FourM(preset("tiny_gelu", DOMAINS_IN, DOMAINS_OUT, tie_decoder_embeddings=True)).to(device).train()
    model.use_sparse_embedding_grads()  # as `open4m train` runs in one process
    params = sum(p.numel() for p in model.parameters())
    in_backward = variant.endswith("+sib")
    opt = StepInBackward(model, lr=1e-4) if in_backward else adamw(model, lr=1e-4)
    batch = make_batch(device=device, batch_size=batch_size)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=variant.startswith("bf16"))

    def step():
        with autocast:
            loss, _ = model(batch, N_IN, N_OUT)
        loss.backward()
        if not in_backward:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup + 1):  # +1: the first step also builds what later steps reuse
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # Counted after the peak is read: FlopCounterMode imports torch's compiler stack (torch._dynamo, sympy:
    # ~80 MB resident), which is the harness's memory, not the training step's.
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    return {
        "precision": variant, "params_M": params / 1e6, "step_s": median, "min_s": min(times),
        "tokens_per_s": batch_size * (N_IN + N_OUT) / median, "gflop_per_step": flops / 1e9,
        "gflops": flops / median / 1e9, "peak_rss_GB": peak,
        "ceiling_fp32": matmul_ceiling(torch.float32, device), "ceiling_bf16": matmul_ceiling(torch.bfloat16, device),
        "threads": torch.get_num_threads(), "device": device, "batch": batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default="fp32,fp32+sib,bf16,bf16+sib")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak memory is then CUDA's peak allocation)")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size (the Core issue's table uses 8)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.steps, args.warmup, args.device, args.batch)))
        return
    rows = []
    for variant in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                              "--warmup", str(args.warmup), "--device", args.device, "--batch", str(args.batch)],
                             capture_output=True, text=True, check=True,
                             env={"MKL_DISABLE_FAST_MM": "1", **os.environ})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    r0 = rows[0]
    print(f"tiny 4M (GELU, tied heads, {r0['params_M']:.2f}M params), batch {r0['batch']}, {N_IN}+{N_OUT} tokens, "
          f"AdamW (fused, official decay groups, sparse encoder-embedding grads), {r0['device']}, "
          f"{r0['threads']} threads, torch {torch.__version__}")
    print(f"{'variant':9s} | {'median step':>11s} | {'min step':>8s} | {'tokens/s':>8s} | {'peak mem':>8s} | "
          f"{'GFLOP/step':>10s} | {'GFLOP/s':>7s} | {'matmul ceiling':>14s} | {'% ceiling':>9s} | "
          f"{'fp32 ceiling':>12s} | {'vs official (scaled)':>20s}")
    for r in rows:
        precision = "bf16" if r["precision"].startswith("bf16") else "fp32"
        ceiling = r["ceiling_bf16"] if precision == "bf16" else r["ceiling_fp32"]
        lo, hi = (t * OFFICIAL_FP32_CEILING / r["ceiling_fp32"] / r["step_s"] for t in OFFICIAL_STEP_S[precision])
        vs = f"{lo:.1f}-{hi:.1f}x" if r["device"] == "cpu" else "-"
        print(f"{r['precision']:9s} | {r['step_s']:10.4f}s | {r['min_s']:7.4f}s | {r['tokens_per_s']:8.0f} | "
              f"{r['peak_rss_GB']:6.2f}GB | {r['gflop_per_step']:10.1f} | {r['gflops']:7.0f} | "
              f"{ceiling:9.0f} GF/s | {100 * r['gflops'] / ceiling:8.0f}% | {r['ceiling_fp32']:7.0f} GF/s | {vs:>20s}")


if __name__ == "__main__":
    main()
