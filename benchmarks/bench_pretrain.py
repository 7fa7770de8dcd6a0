"""Pre-training step throughput: ours against Hugging Face's ViTMAE, same configuration, same batch,
same precision, measured side by side in one run (train step including AdamW, 75% masking).

    .venv/bin/python benchmarks/bench_pretrain.py            # the two small configs
    .venv/bin/python benchmarks/bench_pretrain.py --vit-b    # adds ViT-B/16 at 224 px (slow on CPU)

Prints a Markdown table and writes it to benchmarks/results/pretrain.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import ModelConfig  # noqa: E402
from core.device import autocast  # noqa: E402
from core.model import MaskedAutoencoder  # noqa: E402

CONFIGS = {  # environment.md's measured configurations
    "fmnist (28px, p4, 128/4/4, dec 64/2/4)": (dict(variant="vit_fmnist"), 256),
    "vit-tiny (32px, p4, 192/12/3, dec 128/4/4)": (dict(variant="vit_tiny_cifar"), 128),
    "vit-b/16 (224px, dec 512/8/16)": (dict(variant="vit_base_patch16"), 16),
}


def hf_model(cfg: ModelConfig) -> torch.nn.Module:
    from transformers import ViTMAEForPreTraining

    from tests.hf_port import hf_config

    return ViTMAEForPreTraining(hf_config(cfg))


def step_rate(model: torch.nn.Module, imgs: torch.Tensor, precision: str, hf: bool, steps: int, repeats: int) -> float:
    """Median img/s over `repeats` timed runs of `steps` train steps, after two warm-up steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=not hf)
    device = imgs.device

    def step() -> None:
        with autocast(device, precision):
            loss = model(pixel_values=imgs).loss if hf else model(imgs)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * imgs.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def run(names: list[str], steps: int, repeats: int) -> str:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = ["| config | batch | precision | ours img/s | HF ViTMAE img/s | ours / HF |", "|---|---|---|---|---|---|"]
    for name in names:
        overrides, batch = CONFIGS[name]
        cfg = ModelConfig(**overrides)
        imgs = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
        best = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            ours = step_rate(MaskedAutoencoder(cfg).to(device), imgs, precision, False, steps, repeats)
            theirs = step_rate(hf_model(cfg).to(device), imgs, precision, True, steps, repeats)
            best[precision] = (ours, theirs)
            rows.append(f"| {name} | {batch} | {precision} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |")
            print(rows[-1], flush=True)
        ours_best, theirs_best = max(b[0] for b in best.values()), max(b[1] for b in best.values())
        rows.append(f"| {name} | {batch} | best of each | {ours_best:.1f} | {theirs_best:.1f} | "
                    f"**{ours_best / theirs_best:.2f}** |")
        print(rows[-1], flush=True)
    header = (f"Device: {device.type} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
              f"median of {repeats} x {steps} steps.\n\n")
    return header + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit-b", action="store_true", help="include ViT-B/16 at 224 px")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = list(CONFIGS)[: 3 if args.vit_b else 2]
    table = run(names, args.steps, args.repeats)
    out = Path(__file__).parent / "results" / "pretrain.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
