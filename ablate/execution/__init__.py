"""Running the stages: the runner (waves of ready stages, backend-neutral), the backend contract
(`events.py`) and its two backends (`serial_backend.py` in-process, `ray_backend.py` Ray Tune,
`ray_cluster.py` joining a cluster, `distributed.py` data-parallel trials), one stage's run in a
worker (`stages.py`), and the stage store every result is read from (`store.py`, with `lease.py`:
who runs a stage)."""
