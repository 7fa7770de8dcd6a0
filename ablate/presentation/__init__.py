"""What the user sees: the plan and status tables, the live view, a run's outcome, the study's
tables and report (drawn by the dashboards), a stage's pictures, and the last-resort error line."""
