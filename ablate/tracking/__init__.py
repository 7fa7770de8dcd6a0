"""MLflow: a parent run per study and a child run per stage, following the stage store."""
