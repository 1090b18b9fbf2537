"""ZegOT in JAX."""
