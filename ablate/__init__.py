"""Declarative, resumable MAE ablation studies. The folders follow a study's way through:

    spec/          what to run: the study file and its profile
    planning/      stages, their ids and costs
    execution/     the runner, its backends (serial, Ray) and the stage store
    tracking/      MLflow runs that follow the stage store
    presentation/  tables, report, live view and what the CLI prints
    cli.py         the `ablate` commands; errors.py the one-line errors they all raise
"""
