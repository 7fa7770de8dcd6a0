"""The order in which both backends hand out the stages of a wave: pre-trainings first (they
unlock the most), then plan order; a stage once its parent is done; never one below a parent that
did not end done (the runner marks those blocked). When nothing planned is ready, a search's next
candidate (ablate/execution/search.py), so candidates fill the slots the plan leaves free."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ablate.execution import store
from ablate.planning.plan import Stage

if TYPE_CHECKING:
    from ablate.execution.search import Searches


class WaveOrder:
    def __init__(self, stages: Sequence[Stage], out_root: Path, searches: Searches | None = None) -> None:
        self.waiting = sorted(stages, key=lambda s: s.kind != "pretrain")  # stable: plan order within a kind
        self.ours = {s.id for s in stages}
        self.out_root = Path(out_root)
        self.ended: dict[str, bool] = {}  # stage id -> ended done
        self.searches = searches if searches else None
        self.proposed: list[str] = []  # the searches' candidates handed out in this wave

    def next(self) -> Stage | None:
        """The stage to hand out now, taken: the first ready planned one, else a search's next
        candidate; None while nothing can start."""
        return self._take_first(self.waiting) or self.propose()

    def propose(self) -> Stage | None:
        """A search's next candidate: its stages join the wave (a pre-training search's evaluations
        wait for their pre-training; a stage the wave has already is not added twice), and its first
        ready stage is taken; None while none can start. (Not another waiting stage: the Ray backend
        asks only when those it could hand out are running elsewhere.)"""
        stages = self.searches.propose(self.parent_state) if self.searches is not None else []
        # new to the wave, or ended in it and proposed again (a candidate pruned for one search that
        # another proposes: it resumes from its checkpoint), so handed out once more
        new = [s for s in stages if s.id not in self.ours or self.ended.pop(s.id, None) is not None]
        self.ours.update(s.id for s in new)
        self.proposed += [s.id for s in new if s.id not in self.proposed]
        self.waiting += new
        return self._take_first(new)

    def _take_first(self, stages: Sequence[Stage]) -> Stage | None:
        """The first of `stages` whose parent is done, taken; None if none is."""
        stage = next((s for s in stages if self.parent_done(s)), None)
        if stage is not None:
            self.take(stage)
        return stage

    @property
    def open(self) -> bool:
        """Whether a stage may still be handed out: one waits, or a search may propose another."""
        return bool(self.waiting) or (self.searches is not None and self.searches.may_propose(self.parent_state))

    def parent_state(self, parent: str | None) -> bool | None:
        """True: `parent` (a stage id, None for none) is done; False: it will never be; None: not yet."""
        if parent is None:
            return True
        if parent not in self.ours:
            return store.state(self.out_root, parent) == store.DONE
        return self.ended.get(parent)

    def parent_done(self, stage: Stage) -> bool | None:
        """True: the parent is done; False: it ended otherwise (or was dropped); None: not yet."""
        return self.parent_state(stage.parent)  # one not in the wave finished before it (the runner only passes those)

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
