"""Where each benchmark keeps its table: benchmarks/results/<name>.md, joined by run_all.py."""
from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, text: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.md"
    out.write_text(text)
    print(f"\nwritten to {out}")
    return out
