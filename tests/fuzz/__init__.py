"""Property-based tests' shared pieces: hypothesis profiles and helpers (see tests/test_reliability_fuzz.py)."""
