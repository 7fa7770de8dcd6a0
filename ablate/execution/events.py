"""The backend contract: what runs a wave of stages (`Backend`), and what it tells the driver
while they run (`StageListener`); tracking and the live view listen.

Two backends: the Ray backend (ablate/execution/ray_backend.py) turns Tune's trial events into these calls
(one driver-side `tune.Callback`); the serial one (ablate/execution/serial_backend.py) makes them itself.
The listeners need no Ray and every backend drives them the same way; tests/test_runner.py runs
one contract suite over both.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

if TYPE_CHECKING:
    from ablate.planning.plan import Stage
    from ablate.spec.study import Resources

MAX_FAILURES = 2  # a stage's attempts beyond the first, in every backend, before it is failed


def numeric(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers among a stage's reported values (what `stage_epoch` carries)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Interrupted(Exception):
    """The study was stopped (Ctrl-C); finished stages are kept and running ones resume next time."""


class Backend(Protocol):
    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...

    def admit(self, stages: Sequence[Stage], resources: Resources, out_root: Path) -> None:
        """Raise CannotRun when these stages can never run here (ClusterTooSmall, a node that does
        not see `out_root` or the data)."""

    def run_wave(self, wave: int, stages: Sequence[Stage], all_stages: dict[str, Stage], *, out_root: Path,
                 resources: Resources, listeners: Listeners) -> None:
        """Run the stages to the end, children after their parent, none below a parent that failed;
        each ends done or failed in the store (retried up to MAX_FAILURES times first). Raises
        Interrupted on Ctrl-C, and the OSError of a full or read-only disk, leaving its stage pending."""


class StageListener(Protocol):
    def wave_started(self, wave: int, stage_ids: Sequence[str]) -> None: ...

    def stage_started(self, stage_id: str) -> None: ...

    def stage_epoch(self, stage_id: str, metrics: dict[str, Any]) -> None: ...

    def stage_retrying(self, stage_id: str, error: str) -> None: ...

    def stage_ended(self, stage_id: str, state: str, error: str | None) -> None: ...

    def stage_elsewhere(self, stage_id: str, owner: str) -> None:
        """Another driver sharing the output root runs this stage now ("host/pid")."""


class Listeners:
    """Fan-out to several listeners; one that raises is reported once and then ignored, so a
    tracking server hiccup never stops the study."""

    def __init__(self, listeners: Sequence[StageListener], warn=print):
        self._listeners = list(listeners)
        self._warn = warn

    def _call(self, name: str, *args: Any) -> None:
        for listener in list(self._listeners):
            method = getattr(listener, name, None)
            if method is None:  # an optional event this listener does not follow
                continue
            try:
                method(*args)
            except Exception as e:  # noqa: BLE001 - a listener must not take the study down
                # One line: a database error spans dozens; the one naming the error says most.
                lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                what = next((line for line in lines if "Error" in line), lines[0] if lines else "")[:300]
                self._warn(f"warning: {type(listener).__name__}.{name} failed ({type(e).__name__}: {what}); "
                           f"it is switched off for this run")
                self._listeners.remove(listener)

    def wave_started(self, wave: int, stage_ids: Sequence[str]) -> None:
        self._call("wave_started", wave, stage_ids)

    def stage_started(self, stage_id: str) -> None:
        self._call("stage_started", stage_id)

    def stage_epoch(self, stage_id: str, metrics: dict[str, Any]) -> None:
        self._call("stage_epoch", stage_id, metrics)

    def stage_retrying(self, stage_id: str, error: str) -> None:
        self._call("stage_retrying", stage_id, error)

    def stage_ended(self, stage_id: str, state: str, error: str | None) -> None:
        self._call("stage_ended", stage_id, state, error)

    def stage_elsewhere(self, stage_id: str, owner: str) -> None:
        self._call("stage_elsewhere", stage_id, owner)
