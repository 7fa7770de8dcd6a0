"""Pre-training step throughput: ours against Hugging Face's ViTMAE, same configuration, same batch,
same precision, measured side by side in one run (train step including AdamW, 75% masking).

    .venv/bin/python benchmarks/bench_pretrain.py            # the two small configs
    .venv/bin/python benchmarks/bench_pretrain.py --vit-b    # adds ViT-B/16 at 224 px (slow on CPU)
    .venv/bin/python benchmarks/bench_pretrain.py --compile  # adds torch.compile rows (both models)

Our model runs with the attention kernel our engines pick (core.device.choose_attention: the plain
matmul-softmax path on CPU under bf16, torch's fused SDPA elsewhere). Hugging Face runs twice: as it
comes (its default, SDPA) and with `attn_implementation="eager"`, its own plain path, so the table
shows how much of our lead is that choice.

Prints a Markdown table and writes it to benchmarks/results/pretrain.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import save  # noqa: E402
from core.config import ModelConfig  # noqa: E402
from core.device import autocast, choose_attention  # noqa: E402
from core.flops import train_flops_per_image  # noqa: E402
from core.model import MaskedAutoencoder  # noqa: E402

CONFIGS = {  # environment.md's measured configurations
    "fmnist (28px, p4, 128/4/4, dec 64/2/4)": (dict(variant="vit_fmnist"), 256),
    "vit-tiny (32px, p4, 192/12/3, dec 128/4/4)": (dict(variant="vit_tiny_cifar"), 128),
    "vit-b/16 (224px, dec 512/8/16)": (dict(variant="vit_base_patch16"), 32),  # the paper's per-device batch
}


def hf_model(cfg: ModelConfig, attention: str = "sdpa") -> torch.nn.Module:
    """Hugging Face's ViTMAE for `cfg`; `attention` is its attn_implementation ("sdpa", its default, or "eager")."""
    from transformers import ViTMAEForPreTraining

    from tests.hf_port import hf_config

    config = hf_config(cfg)
    config._attn_implementation = attention
    return ViTMAEForPreTraining(config)


def ours_model(cfg: ModelConfig, device: torch.device, precision: str) -> torch.nn.Module:
    """Our model as the pre-training engine runs it: on `device`, with the attention kernel it picks."""
    return choose_attention(MaskedAutoencoder(cfg).to(device), device, precision)


def make_step(model: torch.nn.Module, imgs: torch.Tensor, precision: str, *, hf: bool) -> Callable[[], None]:
    """One train step (forward, backward, AdamW) on a fixed batch. Both models get the same fused
    AdamW: the comparison is of the models, not of the optimizers. Ours runs its training step
    (`loss_only`: the decoder's last block and prediction for the removed patches only, as the
    engine does); HF computes every prediction and masks the loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    device = imgs.device

    def step() -> None:
        with autocast(device, precision):
            loss = model(pixel_values=imgs).loss if hf else model(imgs, loss_only=True)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def interleaved_rates(steps: dict[str, Callable[[], None]], batch: int, n: int, repeats: int,
                      sync: Callable[[], None]) -> dict[str, float]:
    """Median img/s of each step function over `repeats` rounds of `n` steps, the functions taking
    turns within every round, so that a background load slows all of them alike."""
    for step in steps.values():  # warm-up (and compilation, for compiled ones)
        for _ in range(2):
            step()
    sync()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(n):
                step()
            sync()
            rates[name].append(n * batch / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def counted_flops_per_image(cfg: ModelConfig) -> float:
    """Training FLOPs (forward + backward) per image of our training step, as the engine records
    them (core.flops), counted on the meta device: no memory, no compute."""
    meta = torch.device("meta")
    with meta:
        return train_flops_per_image(MaskedAutoencoder(cfg), meta)


def matmul_limit(precision: str, device: torch.device, n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul in `precision`: the practical limit of this machine."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


MODELS = {  # column label -> builder(cfg, device, precision)
    "ours": ours_model,
    "hf": lambda cfg, device, precision: hf_model(cfg).to(device),
    "hf_eager": lambda cfg, device, precision: hf_model(cfg, "eager").to(device),
}


def run(names: list[str], steps: int, repeats: int, compile_: bool) -> str:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = ["| config | batch | precision | ours img/s | HF ViTMAE img/s | HF, eager attention img/s | ours / HF | "
            "ours / HF eager |", "|---|---|---|---|---|---|---|---|"]
    util = ["| config | precision | train GFLOPs/img (counted) | ours TFLOP/s achieved | matmul limit TFLOP/s | "
            "of the limit |", "|---|---|---|---|---|---|"]
    limits = {p: matmul_limit(p, device) for p in ("fp32", "bf16")}
    variants = ["", "+compile"] if compile_ else [""]
    for name in names:
        overrides, batch = CONFIGS[name]
        cfg = ModelConfig(**overrides)
        imgs = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
        flops = counted_flops_per_image(cfg)
        best: dict[str, tuple[float, str]] = {}
        for precision in ("fp32", "bf16"):
            fns = {}
            for who, build in MODELS.items():
                for variant in variants:
                    torch.manual_seed(0)
                    model = build(cfg, device, precision)
                    fns[who + variant] = make_step(torch.compile(model) if variant else model, imgs, precision,
                                                   hf=who != "ours")
            big = cfg.img_size >= 224  # seconds per step on a CPU: fewer, still interleaved
            rates = interleaved_rates(fns, batch, max(1, steps // 2) if big else steps,
                                      min(repeats, 3) if big else repeats, sync)
            for variant in variants:
                ours, hf, eager = (rates[who + variant] for who in MODELS)
                label = precision + (" + torch.compile" if variant else "")
                rows.append(f"| {name} | {batch} | {label} | {ours:.1f} | {hf:.1f} | {eager:.1f} | {ours / hf:.2f} | "
                            f"{ours / eager:.2f} |")
                print(rows[-1], flush=True)
                for who in MODELS:
                    if rates[who + variant] > best.get(who, (0.0, ""))[0]:
                        best[who] = (rates[who + variant], label)
                achieved = flops * ours
                util.append(f"| {name} | {label} | {flops / 1e9:.3f} | {achieved / 1e12:.3f} | "
                            f"{limits[precision] / 1e12:.3f} | {achieved / limits[precision]:.0%} |")
        (o, o_label), (h, h_label), (e, e_label) = (best[who] for who in MODELS)
        rows.append(f"| {name} | {batch} | best of each (ours {o_label}; HF {h_label}; HF eager {e_label}) | {o:.1f} | "
                    f"{h:.1f} | {e:.1f} | **{o / h:.2f}** | **{o / e:.2f}** |")
        print(rows[-1], flush=True)
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(0)
    header = (f"### Pre-training step: ours vs Hugging Face ViTMAE\n\nDevice: {device.type} ({threads}), "
              f"torch {torch.__version__}; train step = forward + backward + fused AdamW, 75% masking; median of "
              f"{repeats} rounds x {steps} steps (224 px: {min(repeats, 3)} x {max(1, steps // 2)}), the models taking "
              f"turns in every round. Ours runs the attention kernel our engines pick (plain matmul-softmax on CPU "
              f"under bf16, fused SDPA otherwise); HF runs as it comes (SDPA) and with attn_implementation=\"eager\"."
              f"\n\n")
    return (header + "\n".join(rows) + "\n\nAchieved FLOP/s of our step (counted training FLOPs x img/s) against "
            "this machine's large-matmul rate (4096^3) in the same precision:\n\n" + "\n".join(util) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-b", action="store_true", help="include ViT-B/16 at 224 px")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows for both models")
    args = parser.parse_args()
    names = list(CONFIGS)[: 3 if args.vit_b else 2]
    table = run(names, args.steps, args.repeats, args.compile)
    save("pretrain", table)


if __name__ == "__main__":
    main()
