"""Generation latency of the tiny preset (dim 384, 6+6 layers), batch 1, on this machine's CPU.

Two tasks, as in issue 6: a 32-token caption from 196 rgb tokens (autoregressive, greedy) and one 14x14
image (tok_depth@224 from tok_rgb@224) in 8 MaskGIT steps; each in fp32, under bf16 autocast (``bf16``) and
with the weights cast to bf16 once (``bf16w``: no per-call weight casts, how bf16 inference is deployed). The
caption also runs without the KV cache (the official loop: the decoder over the whole prefix per token).
The official sampler's numbers (from the issue, measured on the same kind of machine) sit beside ours. The host's
speed drifts (2x between hours), so the last column also compares through the machine's speed, as the Core
issue's training benchmark does: the official time scaled by 200 GF/s (the 2048^3 fp32 matmul ceiling the
official figures were measured at) / this run's fp32 ceiling (the mean of one measurement before and one after
the timed runs), divided by our time.

    PYTHONPATH=src python benchmarks/generate.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext

import torch

from open4m.batch import make_batch
from open4m.generation import Sampler, TargetSpec
from open4m.model import FourM, preset
from open4m.runtime import tune_cpu
from train_step import OFFICIAL_FP32_CEILING, matmul_ceiling  # benchmarks/ is sys.path[0] when run as a script

CAPTION_TOKENS = 32
OFFICIAL = {  # seconds, from the issue text
    ("caption", "fp32"): "1.0-1.2",
    ("caption", "bf16"): "0.9",
    ("image", "fp32"): "1.1-1.3",
    ("image", "bf16"): "1.1",
}
TARGET_SPEEDUP = {"caption": 4.0, "image": 1.5}


class _FixedTokenizer:
    """Sentinel ids of the official layout ([S_k] = 4 + k), enough for decoding ids without text."""

    eos_id = 3

    def sentinel_id(self, k: int) -> int:
        return 4 + k

    def merge_spans(self, input_ids, target_ids, target_values):
        kept = [j for j in range(1, len(target_ids)) if not 4 <= target_ids[j] < 204]
        return [target_ids[j] for j in kept], [target_values[j] for j in kept]


def caption_state(rgb: torch.Tensor, stop: int) -> dict:
    n = 2 * (256 + 1)
    cap = torch.zeros(1, n, dtype=torch.long)
    cap[0, 0] = cap[0, 1] = 5
    cap[0, CAPTION_TOKENS + 1] = stop
    inputs = torch.zeros(1, n, dtype=torch.bool)
    inputs[0, 0] = True
    targets = torch.zeros(1, n, dtype=torch.bool)
    targets[0, 1 : CAPTION_TOKENS + 2] = True
    return make_batch({"tok_rgb@224": rgb, "caption": cap},
                      inputs={"tok_rgb@224": "all", "caption": inputs}, targets={"caption": targets})


def image_state(rgb: torch.Tensor) -> dict:
    return make_batch({"tok_rgb@224": rgb, "tok_depth@224": torch.zeros(1, 196, dtype=torch.long)},
                      inputs={"tok_rgb@224": "all"}, targets={"tok_depth@224": "all"})


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of ``fn`` after one warm-up call. On a shared machine the
    CPU time divided by the thread count is the steadier estimate of the quiet-machine wall time."""
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu()  # what open4m generate does: allocator settings, denormals flushed to zero
    domains = ["tok_rgb@224", "tok_depth@224", "caption"]
    torch.manual_seed(0)
    model = FourM(preset("tiny_gelu", domains, domains)).eval()
    rgb = torch.randint(0, 16384, (1, 196), generator=torch.Generator().manual_seed(0))
    tok = _FixedTokenizer()
    # A stop token the model does not emit within 32 greedy steps, so every run writes exactly 32 tokens.
    probe = Sampler(model, tok).generate(caption_state(rgb, 6), [TargetSpec("caption", temperature=0.0,
                                                                            max_new_tokens=CAPTION_TOKENS)])
    emitted = set(probe["caption"]["tensor"][0].tolist())
    stop = next(t for t in range(204, 30000) if t not in emitted)
    cap_spec = [TargetSpec("caption", temperature=0.0, max_new_tokens=CAPTION_TOKENS)]
    img_spec = [TargetSpec("tok_depth@224", steps=8, temperature=1.0)]
    ceiling_before = matmul_ceiling(torch.float32)
    rows = []
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)  # weights cast once, as bf16 inference deploys
    for precision in ("fp32", "bf16", "bf16w"):
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
        net = bf16_model if precision == "bf16w" else model

        def run(sampler, state, spec, ctx=ctx):
            with ctx():
                sampler.generate(state, spec, seed=0)

        cached, uncached = Sampler(net, tok, use_cache=True), Sampler(net, tok, use_cache=False)
        cap = timed(lambda s=cached: run(s, caption_state(rgb, stop), cap_spec), args.repeats)
        cap_nc = timed(lambda s=uncached: run(s, caption_state(rgb, stop), cap_spec), args.repeats)
        img = timed(lambda s=cached: run(s, image_state(rgb), img_spec), args.repeats)
        rows.append(("caption", precision, cap, cap_nc))
        rows.append(("image", precision, img, None))
    ceiling = (ceiling_before + matmul_ceiling(torch.float32)) / 2
    scale = OFFICIAL_FP32_CEILING / ceiling
    print(f"tiny_gelu (dim 384, 6+6), batch 1, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; 2048^3 fp32 matmul ceiling {ceiling:.0f} GF/s (official runs: "
          f"{OFFICIAL_FP32_CEILING:.0f})")
    print(f"{'task':8s} {'prec':5s} {'wall':>8s} {'cpu':>8s} {'ms/token':>9s} {'no cache':>9s} {'official':>9s} "
          f"{'speed-up':>9s} {'scaled':>7s} {'target':>7s}")
    for task, precision, (wall, cpu), no_cache in rows:
        official = OFFICIAL[(task, precision.removesuffix("w"))]
        low = float(official.split("-")[0])
        per_token = f"{1000 * wall / CAPTION_TOKENS:9.1f}" if task == "caption" else f"{'':9s}"
        nc = f"{no_cache[0]:8.3f}s" if no_cache is not None else f"{'':9s}"
        print(f"{task:8s} {precision:5s} {wall:7.3f}s {cpu:7.3f}s {per_token} {nc} {official + 's':>9s} "
              f"{low / wall:8.1f}x {low * scale / wall:6.1f}x {TARGET_SPEEDUP[task]:6.1f}x")
    print("speed-up = the official's lower bound / our wall time; scaled = the same with the official time scaled "
          "by the fp32 ceilings; 'no cache' = our decoder over the whole prefix")


if __name__ == "__main__":
    main()
