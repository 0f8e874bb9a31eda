"""Decode attention alone, on the real shapes: which kernel, how fast, how exact (GPU only).

    python benchmarks/bench_decode_attention.py --batch-sizes 1 8 16

One new token attends to a window's 25k-token KV cache: 32 query heads in 8 groups of 4 sharing
a key/value head (Mistral-7B), head size 128, bf16, rows of different lengths. Per kernel and
batch size: microseconds per call (one layer; 32 per new token) and the largest difference from
fp32 attention on the same inputs. Kernels: PyTorch's SDPA with a mask (its default choice,
cuDNN, memory-efficient) and decoding.split_kv_attention (Triton), the fast decoder's default.
"""
import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from llava_soccer import decoding  # noqa: E402


def sdpa(backends):
    def run(q, k, v, positions, scale):
        mask = (torch.arange(k.shape[2], device=q.device) <= positions[:, None])[:, None, None, :]
        with sdpa_kernel(backends) if backends else contextlib.nullcontext():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return run


def reference(q, k, v, positions, scale):
    scores = (q.float() @ k.float().mT) * scale
    mask = torch.arange(k.shape[2], device=q.device) <= positions[:, None]
    return scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1) @ v.float()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 16])
    p.add_argument("--slots", type=int, default=25_167, help="KV buffer length (default: 25,103-token prompt + 64)")
    p.add_argument("--repeats", type=int, default=50)
    a = p.parse_args(argv)
    kernels = {"sdpa_default": sdpa(None), "sdpa_cudnn": sdpa([SDPBackend.CUDNN_ATTENTION]),
               "sdpa_efficient": sdpa([SDPBackend.EFFICIENT_ATTENTION]),
               "split_kv_triton": decoding.split_kv_attention}
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {a.slots} slots, 8 kv heads x 4 queries, d 128")
    print("| batch | kernel | us per layer | max abs diff vs fp32 | max abs output |")
    print("| --- | --- | --- | --- | --- |")
    g = torch.Generator(device="cuda").manual_seed(0)
    for b in a.batch_sizes:
        q = torch.randn(b, 8, 4, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(b, 8, a.slots, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(b, 8, a.slots, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        positions = a.slots - 64 + torch.arange(b, device="cuda") % 64 - 17 * (torch.arange(b, device="cuda") % 3)
        want = reference(q, k, v, positions, 128 ** -0.5)
        for name, fn in kernels.items():
            try:
                got = fn(q, k, v, positions, 128 ** -0.5)
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(a.repeats):
                    fn(q, k, v, positions, 128 ** -0.5)
                end.record()
                torch.cuda.synchronize()
                us = 1000 * start.elapsed_time(end) / a.repeats
                print(f"| {b} | {name} | {us:.0f} | {(got.float() - want).abs().max().item():.2e} | "
                      f"{want.abs().max().item():.2f} |", flush=True)
            except Exception as e:  # one kernel refusing must not hide the others
                print(f"| {b} | {name} | {type(e).__name__}: {str(e).splitlines()[0][:80]} | | |", flush=True)


if __name__ == "__main__":
    main()
