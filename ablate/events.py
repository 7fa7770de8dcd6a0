"""What a backend tells the driver while stages run; tracking and the live view listen.

The Ray backend turns Tune's trial events into these calls (one driver-side `tune.Callback`), so
the listeners need no Ray and every backend drives them the same way.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence


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
