"""Benchmarks of seven-jax: step overhead, threshold cost, optimizer memory.

Run ``python -m benchmarks.run --size tiny|small|full --out results.json``.
"""
