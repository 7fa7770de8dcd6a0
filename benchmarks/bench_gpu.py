"""On a CUDA machine: the per-GPU pre-training speed that the GPU profiles cost stages with, and
one real pass of every engine on the GPU.

    python benchmarks/bench_gpu.py            # needs a CUDA device; torch, timm and pydantic only
    python benchmarks/bench_gpu.py --engines  # only 3. below: the engines' check, about a minute

1. Speed: our MAE training step (forward, backward, fused AdamW, 75% masking, bf16 autocast, the
   attention kernel the engine picks) on a fixed batch already on the GPU, for each variant a GPU
   profile names, at that profile's per-worker batch, with and without torch.compile, against the
   bf16 8192^3 matmul rate measured in the same run. Median img/s of 3 rounds of 20 steps after
   a warm-up. This is the model's speed, not the input pipeline's: an ImageNet JPEG loader must
   keep up with it (10 loader processes per GPU in the paper profile), which is not measured here.
2. Shared GPU: the cifar_gpu profile's pre-training stage (vit_tiny_cifar, batch 512, bf16) run by
   the engine itself on 45,000 32-px images held on the GPU (CIFAR-10's training split after the
   profile's 10% validation carve; synthetic images, the same size and path as CIFAR's), alone and
   as 4 processes at once (the profile's gpu: 0.25 per trial): each trial's img/s of its 2nd epoch.
3. Engines: pre-training on CUDA (synthetic data), stopped after its first epoch and resumed, then
   linear probing and fine-tuning its encoder on CUDA; their losses are finite and the resumed run
   continues at epoch 1.

Prints a Markdown table and writes it to benchmarks/results/gpu.md (and $OUT/gpu.md when set).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import save  # noqa: E402
from core.checkpoint import load_encoder  # noqa: E402
from core.config import DataConfig, ModelConfig, PretrainConfig, PretrainJob  # noqa: E402
from core.device import autocast, choose_attention  # noqa: E402
from core.eval_config import FinetuneConfig, FinetuneJob, LinearProbeConfig, LinearProbeJob  # noqa: E402
from core.finetune import finetune  # noqa: E402
from core.flops import train_flops_per_image  # noqa: E402
from core.linear_probe import linear_probe  # noqa: E402
from core.model import MaskedAutoencoder  # noqa: E402
from core.pretrain import pretrain  # noqa: E402

# (variant, per-worker batch): the paper profile's ViT-L at its batch_size, ViT-B at the same, and
# the cifar_gpu profile's ViT-T at its batch_size.
SPEEDS = [("vit_large_patch16", 256), ("vit_base_patch16", 256), ("vit_tiny_cifar", 512)]


def step_rate(variant: str, batch: int, compile_: bool = False, steps: int = 20, rounds: int = 3
              ) -> tuple[float, float]:
    """(median img/s, counted training GFLOPs per image) of our bf16 training step (torch.compile'd
    as `pretrain.compile: true` runs it when `compile_`)."""
    device = torch.device("cuda")
    cfg = ModelConfig(variant=variant)
    torch.manual_seed(0)
    model = choose_attention(MaskedAutoencoder(cfg).to(device), device, "bf16")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    imgs = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
    forward = torch.compile(model) if compile_ else model

    def step() -> None:
        with autocast(device, "bf16"):
            loss = forward(imgs, loss_only=True)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        rates.append(steps * batch / (time.perf_counter() - start))
    flops = train_flops_per_image(model, device)
    return statistics.median(rates), flops / 1e9


def cifar_trial(root: str) -> None:
    """One cifar_gpu pre-training trial, 2 epochs; prints its 2nd epoch's img/s as the last line."""
    seen: list[dict] = []
    job = PretrainJob(model=ModelConfig(variant="vit_tiny_cifar"),
                      data=DataConfig(dataset="synthetic", synthetic_size=50_000, val_fraction=0.1),
                      pretrain=PretrainConfig(epochs=2, warmup_epochs=1, batch_size=512, blr=1.5e-4,
                                              precision="bf16", device="cuda"))
    pretrain(job, Path(root), report=seen.append)
    print(seen[-1]["img_per_s"])


def shared_rates(root: Path, trials: int) -> list[float]:
    """img/s of each of `trials` cifar_gpu trials run at once on the one GPU."""
    procs = [subprocess.Popen([sys.executable, __file__, "--cifar-trial", str(root / f"t{trials}-{i}")],
                              stdout=subprocess.PIPE, text=True) for i in range(trials)]
    outs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return [float(o.strip().splitlines()[-1]) for o in outs]


def matmul_limit(n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of a large bf16 square matmul on the GPU (mean of `repeats` after 3 warm-ups)."""
    a, b = (torch.randn(n, n, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


class Stop(Exception):
    pass


def engines(root: Path, device: str = "cuda", images: int = 2048) -> list[str]:
    """Run the three engines on `device`; return Markdown rows (check, result)."""
    rows = []
    model = ModelConfig(variant="vit_tiny_cifar")
    data = DataConfig(dataset="synthetic", synthetic_size=images)
    job = PretrainJob(model=model, data=data, pretrain=PretrainConfig(
        epochs=3, warmup_epochs=1, batch_size=256, blr=1.5e-4, precision="bf16", device=device))

    def stop_after_first(metrics: dict) -> None:
        raise Stop

    try:
        pretrain(job, root / "pre", report=stop_after_first)
    except Stop:
        pass
    resumed: list[dict] = []
    result = pretrain(job, root / "pre", report=resumed.append)
    epochs = [m["epoch"] for m in resumed]
    losses = [m["loss"] for m in resumed]
    assert epochs == [1, 2], f"resumed pre-training ran epochs {epochs}, expected [1, 2]"
    assert all(map(torch.isfinite, torch.tensor(losses))), losses
    rows.append(f"| pre-training, stopped after epoch 0 and resumed | epochs {epochs}, loss "
                f"{' -> '.join(f'{x:.4f}' for x in losses)}, {result['img_per_s']:.0f} img/s (input pipeline included) |")
    encoder = load_encoder(next((root / "pre").glob("encoder*.pth")))
    assert all(t.device.type == "cpu" for t in encoder.values()), "a saved encoder must load on CPU"
    probe = linear_probe(LinearProbeJob(model=model, data=data, probe=LinearProbeConfig(
        epochs=2, warmup_epochs=1, batch_size=256, precision="bf16", device=device)), encoder, root / "lin")
    rows.append(f"| linear probe of that encoder | lin_top1 {probe['lin_top1']:.1f}, loss {probe['train_loss']:.4f}, "
                f"{probe['img_per_s']:.0f} img/s |")
    tuned = finetune(FinetuneJob(model=model, data=data, finetune=FinetuneConfig(
        epochs=2, warmup_epochs=1, batch_size=128, precision="bf16", device=device)), encoder, root / "ft")
    rows.append(f"| fine-tune of that encoder | ft_top1 {tuned['ft_top1']:.1f}, loss {tuned['train_loss']:.4f}, "
                f"{tuned['img_per_s']:.0f} img/s |")
    for name, metrics in (("probe", probe), ("finetune", tuned)):
        assert torch.isfinite(torch.tensor(metrics["train_loss"])), (name, metrics)
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--cifar-trial"]:
        return cifar_trial(sys.argv[2])
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA device is visible; run it on a machine with a GPU")
    gpu = torch.cuda.get_device_name(0)
    if sys.argv[1:2] == ["--engines"]:
        with tempfile.TemporaryDirectory() as tmp:
            print("\n".join([f"engines on {gpu}, torch {torch.__version__}", "", "| engine check on CUDA | result |",
                             "|---|---|", *engines(Path(tmp))]))
        return
    limit = matmul_limit() / 1e12
    lines = [f"### GPU: pre-training speed and the engines on {gpu}\n",
             f"torch {torch.__version__}, CUDA {torch.version.cuda}. Speed: our training step (forward, backward, "
             "fused AdamW, 75% masking, bf16 autocast, fused SDPA attention) on a batch already on the GPU, median of "
             "3 rounds x 20 steps after 3 warm-up steps; the input pipeline is not included.\n",
             f"Large-matmul limit measured in the same run: {limit:.0f} TFLOP/s (bf16, 8192^3).\n",
             "| variant | batch | torch.compile | img/s | train GFLOPs/img (counted) | TFLOP/s achieved | of the limit |",
             "|---|---|---|---|---|---|---|"]
    for variant, batch in SPEEDS:
        for compile_ in (False, True):
            rate, gflops = step_rate(variant, batch, compile_)
            torch.cuda.empty_cache()
            achieved = rate * gflops / 1e3
            lines.append(f"| {variant} | {batch} | {'yes' if compile_ else 'no'} | {rate:.0f} | {gflops:.2f} | "
                         f"{achieved:.0f} | {achieved / limit:.0%} |")
            print(lines[-1], flush=True)
    lines += ["", "cifar_gpu profile's pre-training trial run by the engine (45,000 32-px images on the GPU, "
              "batch 512, bf16), its 2nd epoch:", "",
              "| trials at once on the GPU | img/s of each trial | together |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for trials in (1, 4):
            rates = shared_rates(Path(tmp), trials)
            lines.append(f"| {trials} | {', '.join(f'{r:.0f}' for r in rates)} | {sum(rates):.0f} |")
            print(lines[-1], flush=True)
    lines += ["", "| engine check on CUDA | result |", "|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        lines += engines(Path(tmp))
    table = "\n".join(lines) + "\n"
    print(table)
    save("gpu", table)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.md").write_text(table)


if __name__ == "__main__":
    main()
