"""The order in which both backends hand out the stages of a wave: pre-trainings first (they
unlock the most), then plan order; a stage once its parent is done; never one below a parent that
did not end done (the runner marks those blocked)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ablate.execution import store
from ablate.planning.plan import Stage


class WaveOrder:
    def __init__(self, stages: Sequence[Stage], out_root: Path) -> None:
        self.waiting = sorted(stages, key=lambda s: s.kind != "pretrain")  # stable: plan order within a kind
        self.ours = {s.id for s in stages}
        self.out_root = Path(out_root)
        self.ended: dict[str, bool] = {}  # stage id -> ended done

    def parent_done(self, stage: Stage) -> bool | None:
        """True: the parent is done; False: it ended otherwise (or was dropped); None: not yet."""
        if stage.parent is None:
            return True
        if stage.parent not in self.ours:  # finished before this wave (the runner only passes those)
            return store.state(self.out_root, stage.parent) == store.DONE
        return self.ended.get(stage.parent)

    def ready(self) -> list[Stage]:
        """The waiting stages whose parent is done, in order."""
        return [stage for stage in self.waiting if self.parent_done(stage)]

    def take(self, stage: Stage) -> None:
        self.waiting.remove(stage)

    def end(self, stage_id: str, done: bool) -> None:
        self.ended[stage_id] = done

    def drop_orphans(self) -> list[str]:
        """Drop the waiting stages whose parent will never be done, and theirs in turn; their ids."""
        dropped: list[str] = []
        while orphans := [s for s in self.waiting if self.parent_done(s) is False]:
            for stage in orphans:
                self.take(stage)
                self.end(stage.id, False)
                dropped.append(stage.id)
        return dropped
