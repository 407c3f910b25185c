"""Benchmarks, one module per measurement; run them all with `python -m ditm_jax.bench`."""
