"""What to run: a study file (axes, evaluations, seeds, figures) and the profile that sets its
scale (recipes, resources, measured speed), read strictly and checked field by field."""
