"""seven-jax: SEVEN pruning for JAX/Flax, as optax gradient transformations."""

__version__ = "0.1.0"
