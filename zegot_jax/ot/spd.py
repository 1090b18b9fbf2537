"""Solves with the small symmetric positive definite N x N systems of MPOT (N = prompts).

Newton's step and the implicit backward each solve one N x N system per problem, and a batch has
thousands of problems (layers x images x classes). `jnp.linalg.solve` runs LAPACK's LU once per
problem on the CPU; for N <= `UNROLLED_MAX` this module writes the Cholesky factorisation and
the two triangular solves out as scalar formulas instead, which `vmap` turns into elementwise
operations over all problems (measured on 2,304 problems with N = 4: BENCHMARKS.md, "MPOT
solvers"). Both systems are symmetric positive definite (see `solvers.newton_plan` and
`implicit.py`), so Cholesky needs no pivoting; only the lower triangle is read.
"""

import jax
import jax.numpy as jnp

UNROLLED_MAX = 8  # larger N: LAPACK (the unrolled formulas grow as N^3 / 6 operations)


def solve(matrix: jax.Array, rhs: jax.Array) -> jax.Array:
    """`matrix^{-1} rhs` for a symmetric positive definite `matrix [N, N]` and `rhs [N]`.

    For N <= `UNROLLED_MAX` a matrix that is not positive definite (to float precision) gives
    NaN, not a wrong number; LAPACK's LU (larger N) solves any nonsingular matrix.
    """
    n = matrix.shape[-1]
    if matrix.shape != (n, n) or rhs.shape != (n,):
        raise ValueError(f"spd.solve: expected [N, N] and [N], got {matrix.shape} and {rhs.shape}.")
    if n > UNROLLED_MAX:
        return jnp.linalg.solve(matrix, rhs)
    low = [[None] * n for _ in range(n)]  # the Cholesky factor L, matrix = L L^T
    for j in range(n):
        pivot = jnp.sqrt(matrix[j, j] - sum((low[j][k] ** 2 for k in range(j)), 0.0))
        low[j][j] = pivot
        for i in range(j + 1, n):
            low[i][j] = (matrix[i, j] - sum((low[i][k] * low[j][k] for k in range(j)), 0.0)) / pivot
    y = []  # L y = rhs
    for i in range(n):
        y.append((rhs[i] - sum((low[i][k] * y[k] for k in range(i)), 0.0)) / low[i][i])
    x = [None] * n  # L^T x = y
    for i in reversed(range(n)):
        x[i] = (y[i] - sum((low[k][i] * x[k] for k in range(i + 1, n)), 0.0)) / low[i][i]
    return jnp.stack(x)
