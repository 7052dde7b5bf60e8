"""Triton kernels, one module per op, imported lazily on first use (see fusedops/ops/_library.py)."""
