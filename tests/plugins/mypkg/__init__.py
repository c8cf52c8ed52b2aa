"""A user's model package, as it would live outside bayesfan (used by tests/test_byo_model.py)."""
