"""A stage's own pictures, drawn in its folder from its own files: `curves.png` (its per-epoch
metrics) and, for a pre-training, `reconstructions.png`. The stage's worker draws them as it ends
(its own process time, not the driver's event loop); the tracker logs them to the stage's run."""
from __future__ import annotations

import warnings
from pathlib import Path

from ablate.execution import store

CURVES, RECONSTRUCTIONS = "curves.png", "reconstructions.png"


def draw(folder: Path, title: str) -> list[Path]:
    """Write the pictures the folder's files allow.
    A figure that cannot be drawn is a warning, never the stage's failure."""
    import pandas as pd  # matplotlib and pandas: only when drawing

    from dashboards.figures import stage_curves
    from dashboards.recon import reconstruction_grid
    folder = Path(folder)
    out = []
    try:
        epochs = store.epochs(folder.parent.parent, folder.name)
        if epochs:
            stage_curves(pd.DataFrame(epochs), title).savefig(folder / CURVES, dpi=100)
            out.append(folder / CURVES)
        if (folder / "reconstructions.npz").is_file():
            reconstruction_grid(folder / "reconstructions.npz", title=f"Reconstructions ({title})").savefig(
                folder / RECONSTRUCTIONS, dpi=100)
            out.append(folder / RECONSTRUCTIONS)
    except Exception as e:  # noqa: BLE001 - pictures are a view of the results, not the results
        warnings.warn(f"the pictures of {folder.name} could not be drawn ({type(e).__name__}: {e})", stacklevel=2)
    return out


def pictures(folder: Path) -> list[Path]:
    return [Path(folder) / name for name in (CURVES, RECONSTRUCTIONS) if (Path(folder) / name).is_file()]
