"""Shapes and textures of the synthetic world, drawn with whole-array numpy operations.

Coordinates are normalised to the image: a pixel centre is `((i + 0.5) / size, (j + 0.5) / size)`,
so one description renders at any resolution. Every painter draws hard edges (no anti-aliasing):
a pixel belongs to exactly one region, which is what makes the masks pixel-exact.

Shape functions take the pixel grid `(y, x)`, each `[H, W]`, and return a boolean mask `[H, W]`.
Texture functions return float RGB `[H, W, 3]` in [0, 255] before the image-wide illumination.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

Grid = tuple[np.ndarray, np.ndarray]


class Footprint(NamedTuple):
    """Where an object lies. All fields `[H, W]`.

    Attributes:
        mask: boolean, the object's pixels.
        radial: distance from the centre relative to the object's size (about 1 at the rim).
        u: coordinate along the object's own (rotated) axis, in image units.
        v: coordinate across the object's axis, in image units.
    """

    mask: np.ndarray
    radial: np.ndarray
    u: np.ndarray
    v: np.ndarray


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> Grid:
    """Normalised pixel-centre coordinates `(y, x)`, each `[size, size]` float32 (cached)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    y.setflags(write=False)
    x.setflags(write=False)
    return y, x


_BANK_SIZE = 1 << 20


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    bank = np.random.default_rng(20240131).standard_normal(_BANK_SIZE, dtype=np.float32)
    bank.setflags(write=False)
    return bank


def noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard-normal noise of `shape` (float32), a random window of a fixed bank (fast)."""
    n = int(np.prod(shape))
    if n > _BANK_SIZE:
        return rng.standard_normal(shape, dtype=np.float32)
    start = int(rng.random() * (_BANK_SIZE - n))  # one draw whatever the shape
    return _noise_bank()[start : start + n].reshape(shape)


def _unit_power(u: np.ndarray, v: np.ndarray, k: int) -> np.ndarray:
    """`exp(i k theta)` `[H, W]` complex64 for theta = atan2(v, u), without trigonometry."""
    z = (u + 1j * v).astype(np.complex64)
    z /= np.maximum(np.abs(z), 1e-6)
    out, base = np.ones_like(z), z
    while k:
        if k & 1:
            out = out * base
        base, k = base * base, k >> 1
    return out


def _coarse(grid: Grid, cells: np.ndarray) -> np.ndarray:
    """Nearest-neighbour upsampling of an `[n, n]` array of cells to the pixel grid `[H, W]`."""
    n = cells.shape[0]
    rows = np.minimum((grid[0][:, 0] * n).astype(np.int32), n - 1)
    cols = np.minimum((grid[1][0] * n).astype(np.int32), n - 1)
    return cells[rows[:, None], cols[None, :]]


def _frame(grid: Grid, cy: float, cx: float, angle: float) -> Grid:
    """Coordinates `(u, v)` `[H, W]` in an object frame centred at (cy, cx) and rotated by angle."""
    y, x = grid
    dy, dx = y - float(cy), x - float(cx)
    c, s = float(np.cos(angle)), float(np.sin(angle))
    return c * dx + s * dy, -s * dx + c * dy


# ---------------------------------------------------------------------------------------------
# Shapes. Each takes (grid, rng, cy, cx, r, angle) and returns a Footprint.
# ---------------------------------------------------------------------------------------------


def disc(grid, rng, cy, cx, r, angle):
    """A round disc (tomato, cookie)."""
    u, v = _frame(grid, cy, cx, angle)
    d = np.sqrt(u * u + v * v) / r
    return Footprint(d < 1.0, d, u, v)


def ellipse(grid, rng, cy, cx, r, angle):
    """An elongated ellipse with pointed-looking tips (lemon)."""
    u, v = _frame(grid, cy, cx, angle)
    d = np.sqrt((u / r) ** 2 + (v / (0.68 * r)) ** 2)
    return Footprint(d < 1.0, d, u, v)


def ring(grid, rng, cy, cx, r, angle, hole: float = 0.42):
    """An annulus; the hole shows whatever lies below (donut, tire)."""
    u, v = _frame(grid, cy, cx, angle)
    d = np.sqrt(u * u + v * v) / r
    return Footprint((d < 1.0) & (d > hole), np.abs(d - (1 + hole) / 2) / ((1 - hole) / 2), u, v)


def wedge(grid, rng, cy, cx, r, angle):
    """A long triangle, broad end first (carrot); length 2.6r along the rotated u axis."""
    u, v = _frame(grid, cy, cx, angle)
    t = (u + 1.3 * r) / (2.6 * r)  # 0 at the broad end, 1 at the tip
    half = 0.6 * r * (1 - t)
    inside = (t >= 0) & (t <= 1) & (np.abs(v) < half)
    return Footprint(inside, np.clip(np.abs(v) / np.maximum(half, 1e-6), 0, 1), u, v)


_CLUSTER = np.array(
    [
        (0.0, -0.5),
        (0.0, 0.0),
        (0.0, 0.5),
        (0.43, -0.25),
        (0.43, 0.25),
        (0.86, 0.0),
        (-0.43, -0.25),
        (-0.43, 0.25),
    ],
    np.float32,
)


def cluster(grid, rng, cy, cx, r, angle):
    """A bunch of touching small discs (grape)."""
    u, v = _frame(grid, cy, cx, angle)
    br = 0.3 * r
    d = np.full(u.shape, np.inf, np.float32)
    for du, dv in _CLUSTER * (1.08 * r):
        d = np.minimum(d, np.sqrt((u - du) ** 2 + (v - dv) ** 2) / br)
    return Footprint(d < 1.0, d, u, v)


def blob(grid, rng, cy, cx, r, angle):
    """An irregular lumpy outline (rock): radius modulated by a few random harmonics."""
    u, v = _frame(grid, cy, cx, angle)
    amp = rng.uniform(0.05, 0.13, 3)
    phase = rng.uniform(0, 2 * np.pi, 3)
    z2 = _unit_power(u, v, 2)
    z3 = z2 * _unit_power(u, v, 1)
    wobble = sum(
        ((a * np.exp(1j * p)).astype(np.complex64) * z).real
        for a, p, z in zip(amp, phase, (z2, z3, z2 * z2), strict=True)
    )
    rad = r * (1 + wobble)
    d = np.sqrt(u * u + v * v) / rad
    return Footprint(d < 1.0, d, u, v)


# ---------------------------------------------------------------------------------------------
# Textures. Each takes (grid, rng, base [3], footprint or None for stuff) and returns float RGB
# [H, W, 3].
# ---------------------------------------------------------------------------------------------


def shaded(grid, rng, base, fp):
    """Base colour, darker towards the rim (a lit round object)."""
    shade = 1.03 - 0.13 * np.clip(fp.radial, 0, 1) ** 2
    return base * shade[..., None]


def speckled(grid, rng, base, fp, spot=(0.4, 0.25, 0.12), density=0.2):
    """Shaded base with sparse dark spots whose colour is `spot` times the base (cookie chips)."""
    out = shaded(grid, rng, base, fp)
    chips = _coarse(grid, rng.random((16, 16)) < density)
    return np.where(chips[..., None], base * np.asarray(spot, np.float32), out)


def grainy(grid, rng, base, fp, amount=12.0):
    """Base colour with strong per-pixel grey noise (rock)."""
    grain = amount * noise(rng, grid[0].shape)
    return shaded(grid, rng, base, fp) + grain[..., None]


def treaded(grid, rng, base, fp):
    """Dark base with radial tread lines (tire)."""
    turn = np.complex64(np.exp(1j * rng.uniform(0, 2 * np.pi)))
    lines = ((_unit_power(fp.u, fp.v, 18) * turn).real > 0.6).astype(np.float32)
    return base + 28.0 * lines[..., None]


def ridged(grid, rng, base, fp):
    """Shaded base with faint ridges across the object's long axis (carrot)."""
    ridges = 0.92 + 0.08 * (np.sin(fp.u * 90 + float(rng.uniform(0, 6.3))) > 0.5)
    return shaded(grid, rng, base, fp) * ridges[..., None]


def gradient_sky(grid, rng, base, fp):
    """Smooth vertical gradient, darker at the top."""
    y, _ = grid
    t = (0.9 + 0.16 * y)[..., None]
    return base * t


def blades(grid, rng, base, fp):
    """Vertical streaks of varying brightness (grass)."""
    size = grid[0].shape[0]
    column = 1.0 + 0.12 * noise(rng, (1, size))
    pixel = 0.08 * noise(rng, (size, size))
    return base * np.clip(column + pixel, 0.55, 1.45)[..., None]


def speckles(grid, rng, base, fp):
    """Fine bright/dark grain (sand)."""
    grain = 0.09 * noise(rng, grid[0].shape)
    return base * (1 + np.clip(grain, -0.25, 0.25))[..., None]


def waves(grid, rng, base, fp):
    """Horizontal wavy stripes of a lighter tint (water)."""
    y, x = grid
    freq, phase, wfreq, wphase = (float(a) for a in rng.uniform((20, 0, 10, 0), (30, 6.3, 20, 6.3)))
    wob = 0.02 * np.sin(x * wfreq + wphase)
    crest = (np.sin((y + wob) * freq + phase) > 0.55)[..., None]
    return np.where(crest, base * 1.0 + np.float32([35, 45, 45]), base)


def mottled(grid, rng, base, fp):
    """Near-white with faint bluish low-frequency mottling (snow)."""
    fine = _coarse(grid, rng.random((4, 4)).astype(np.float32))
    return base - (14.0 * fine)[..., None] * np.float32([1.0, 0.7, 0.2])
