"""How much memory one `segment` call needs, and how much there is.

A too-large image is then refused with an estimate instead of dying in an allocation.

Available is the tightest of what applies: the default device allocator's free bytes (an
accelerator), the host's MemAvailable, the cgroup's memory limit (containers: v2 `memory.max`,
v1 `memory.limit_in_bytes`) and the address-space rlimit (`ulimit -v`), each less what is in use.
"""

import math
import resource
from pathlib import Path

import jax
import ml_collections

from zegot_jax.evaluation import sliding

# What drawing the overlay and the per-prompt grid costs at most: images are drawn at most
# `viz.DISPLAY_MAX_SIDE` pixels on a side (about 40 bytes per displayed pixel while blending and
# rendering), whatever the input size.
FIGURE_BYTES = 2000 * 2000 * 40


def estimate_bytes(
    config: ml_collections.ConfigDict,
    num_layers: int,
    patch: int,
    scored: tuple[int, int],
    out: tuple[int, int],
    num_classes: int,
    *,
    full_scores: bool,
    figures: bool = False,
) -> int:
    """A rough peak of one `segment` call, in bytes.

    It counts the per-prompt similarity, cost and plan tensors of every window
    (`[L, windows, K, M, N]`, float32, about 4 live at once), the scored-size logits, the
    full-resolution maps (`[K, H, W]` when the scores are kept, else a few `[H, W]`), the label map
    and its 8-bit copy, and with `figures` the overlay and prompt grid (`FIGURE_BYTES`).
    """
    ev = config.eval
    if ev.mode == "slide":
        windows = len(sliding.window_starts(scored[0], ev.crop, ev.stride)) * len(
            sliding.window_starts(scored[1], ev.crop, ev.stride)
        )
        tokens = (ev.crop // patch) ** 2
    else:
        windows, tokens = 1, (scored[0] // patch) * (scored[1] // patch)
    prompts = config.model.num_prompts if config.model.prompts == "learned" else len(config.model.templates)
    ot = 4 * num_layers * windows * num_classes * tokens * prompts
    maps = num_classes * scored[0] * scored[1] + (num_classes if full_scores else 4) * math.prod(out)
    return 4 * (ot + 2 * maps) + 5 * math.prod(out) + (FIGURE_BYTES if figures else 0)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):  # absent, or 'max' (no limit)
        return None


def _meminfo(proc: Path) -> int | None:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _cgroup(root: Path) -> int | None:
    for limit, usage in (
        ("memory.max", "memory.current"),  # v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):  # v1
        cap, used = _read_int(root / limit), _read_int(root / usage)
        if cap is not None and used is not None and cap < 2**60:  # v1 writes ~2^63 for none
            return cap - used
    return None


def _rlimit(proc: Path) -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    pages = _read_int(proc / "self" / "statm")  # first field: the virtual size in pages
    return soft - (pages or 0) * resource.getpagesize()


def _device() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def available_bytes(*, proc: Path = Path("/proc"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The tightest free memory of the device, MemAvailable, the cgroup and the rlimit.

    None if none can be read.
    """
    found = [v for v in (_device(), _meminfo(proc), _cgroup(cgroup), _rlimit(proc)) if v is not None]
    return max(min(found), 0) if found else None


def check_memory(needed: int, what: str) -> None:
    """Raises ValueError, with the estimate, when `needed` bytes exceed what is available."""
    available = available_bytes()
    if available is not None and needed > available:
        raise ValueError(
            f"{what} needs about {needed / 2**30:.1f} GiB but {available / 2**30:.1f} "
            "GiB are free: lower eval.crop or data.eval_short_side, use fewer classes, "
            "or skip the full score maps (full_scores=False)."
        )
