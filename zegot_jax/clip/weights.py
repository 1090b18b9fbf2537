"""Loads CLIP checkpoints into `CLIP` modules (strictly) and saves them as safetensors.

Accepted: OpenAI's TorchScript `.pt` files (needs torch), OpenAI/open_clip state dicts (`.pt`,
`.bin` via torch; `.safetensors` via safetensors' numpy API), Hugging Face `openai/clip-vit-*`
directories (`config.json` + `model.safetensors`) or their safetensors file alone, a variant name
('ViT-B/16', fetched from the hub) or a hub id (huggingface_hub's cache and HF_HUB_OFFLINE apply).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zegot_jax import storage
from zegot_jax.clip import convert
from zegot_jax.clip.model import CLIP
from zegot_jax.clip.variants import ACTIVATIONS, HUB_IDS, CLIPSpec, known_heads
from zegot_jax.errors import MissingDependency

_SAFETENSORS_FORMAT = "zegot_jax.clip"
_HUB_FILES = ("config.json", "model.safetensors", "open_clip_config.json", "open_clip_model.safetensors")
_WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)  # in order of preference inside a directory


def _read_safetensors(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            state, raw = {}, []
            for key in f.keys():
                try:
                    state[key] = f.get_tensor(key)
                except TypeError:  # bfloat16: numpy has no such dtype, read the bytes ourselves
                    raw.append(key)
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    if raw:
        state.update(_read_bfloat16(path, raw))
    return state, metadata


def _read_bfloat16(path: pathlib.Path, keys: list[str]) -> dict[str, np.ndarray]:
    import ml_dtypes

    data = np.memmap(path, np.uint8, mode="r")
    size = int(np.frombuffer(data[:8].tobytes(), "<u8")[0])
    header = json.loads(data[8 : 8 + size].tobytes())
    out = {}
    for key in keys:
        info = header[key]
        if info["dtype"] != "BF16":
            raise ValueError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}.")
        start, end = (8 + size + o for o in info["data_offsets"])
        out[key] = np.frombuffer(data[start:end].tobytes(), ml_dtypes.bfloat16).reshape(info["shape"])
    return out


def _is_torchscript(path: pathlib.Path) -> bool:
    """TorchScript archives are zip files with a `code/` folder; `torch.save` files have none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise MissingDependency(
            f"Reading {path.name} (a PyTorch file) needs torch: pip install torch "
            "(CPU is enough), or convert the checkpoint to .safetensors."
        ) from e
    try:
        if _is_torchscript(path):  # OpenAI's released .pt files
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path} could not be read as a TorchScript archive or a torch state "
            f"dict (truncated or corrupt?): {e}"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # open_clip training checkpoints
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        out[key.removeprefix("module.")] = value.numpy()
    return out


def _resolve(path_or_hub_id: str | os.PathLike, offline: bool = False) -> pathlib.Path:
    """The local file or directory that `path_or_hub_id` names.

    Variant names and hub ids are fetched through huggingface_hub (with `offline`, taken from its
    cache only); a `gs://` file or folder is copied into the local cache first (`_from_bucket`).
    """
    if storage.is_remote(path_or_hub_id):
        return _from_bucket(storage.normalise(path_or_hub_id))
    path = pathlib.Path(path_or_hub_id).expanduser()
    if path.exists():
        return path
    name = str(path_or_hub_id)
    repo_id = HUB_IDS.get(name, name)
    if (
        name.startswith((".", "/", "~"))
        or name.count("/") != 1
        or name.endswith((".pt", ".bin", ".safetensors"))
    ):
        raise FileNotFoundError(
            f"No CLIP checkpoint at {name!r} (not a file, directory, variant "
            f'{sorted(HUB_IDS)} or hub id "org/name").'
        )
    from huggingface_hub import snapshot_download

    try:
        folder = pathlib.Path(
            snapshot_download(repo_id, allow_patterns=list(_HUB_FILES), local_files_only=offline)
        )
        if not any((folder / name).is_file() for name in _WEIGHT_FILES):  # PyTorch files only
            folder = pathlib.Path(
                snapshot_download(repo_id, allow_patterns=list(_WEIGHT_FILES), local_files_only=offline)
            )
        return folder
    except Exception as e:
        if offline:
            raise FileNotFoundError(
                f"CLIP weights {name!r} are not in the local Hugging Face cache, and offline "
                "loading fetches nothing: pass the weights (a path, or the hub id to fetch it "
                "from the hub) explicitly."
            ) from e
        raise FileNotFoundError(
            f"No local file or directory {name!r}, and fetching {repo_id!r} "
            "from the Hugging Face hub failed (offline and not cached, or no "
            f"such repository?): {e}"
        ) from e


def _from_bucket(url: str) -> pathlib.Path:
    """A local copy of the weights file or folder at gs:// `url`.

    Kept under the cache (`$ZEGOT_CACHE`, else `~/.cache/zegot_jax`) and fetched again when an
    object's size changes.
    """
    storage.require_gcs(url)
    root = pathlib.Path(os.environ.get("ZEGOT_CACHE") or pathlib.Path.home() / ".cache" / "zegot_jax")
    local = root / "gcs" / url[len("gs://") :]
    remote = storage.path(url)
    with storage.gcs_errors(url):
        names = [] if remote.is_file() else storage.listdir(url)
        if not names and not remote.is_file():
            raise FileNotFoundError(f"No CLIP checkpoint at {url!r} (no such object or folder).")
        files = (
            [(remote, local)]
            if not names
            else [(remote / n, local / n) for n in names if (remote / n).is_file()]
        )
        for source, target in files:
            if not target.is_file() or target.stat().st_size != source.stat().length:
                storage.write_bytes(target, storage.read_bytes(source))
    return local


def _pick_file(directory: pathlib.Path) -> pathlib.Path:
    for name in _WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"{directory} holds no model.safetensors, open_clip_model.safetensors or pytorch_model.bin."
    )


def read_checkpoint(
    path: pathlib.Path,
    activation: str | None = None,
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> tuple[dict[str, np.ndarray], CLIPSpec]:
    """Reads a checkpoint file or directory into an OpenAI-layout dict and its inferred spec.

    Shapes give every width and depth but not the activation or the attention heads. Those come
    from our safetensors metadata, a HF `config.json` or an `open_clip_config.json` beside the file,
    or OpenAI's TorchScript format (QuickGELU); `activation`, `vision_heads` and `text_heads`
    override them and, for a bare state dict, the activation is required. Heads nothing declares
    are taken from the known variant of that width (`variants.known_heads`).

    Raises:
        ValueError: a bare state dict and no `activation`, or a tower whose heads nothing gives.
    """
    file = _pick_file(path) if path.is_dir() else path
    if file.suffix == ".safetensors":
        state, metadata = _read_safetensors(file)
        declared = None
    else:
        state, metadata = _read_torch(file), {}
        declared = "quick_gelu" if _is_torchscript(file) else None  # OpenAI's released files
    heads = {}
    open_clip_config = file.parent / "open_clip_config.json"
    if open_clip_config.is_file():
        heads, declared = _open_clip_config(open_clip_config)
    if metadata.get("format") == _SAFETENSORS_FORMAT and not (
        activation and vision_heads and text_heads
    ):  # all given: the metadata is not read
        heads, declared = _our_metadata(file, metadata)
    if convert.is_hf_layout(state):
        state = convert.hf_to_openai(state)
        config = file.parent / "config.json"
        if config.is_file():
            heads, declared = _hf_config(config)
    heads.update({k: int(v) for k, v in (("vision_heads", vision_heads), ("text_heads", text_heads)) if v})
    if activation is None and declared is None:
        convert.infer_spec(state)  # a file that is no CLIP at all says so first
        raise ValueError(
            f"{file} does not say which activation and attention heads its model uses (no "
            "config.json or open_clip_config.json beside it): put the model's config beside it, "
            "or pass activation='quick_gelu' (OpenAI's weights) or 'gelu' (most others; "
            "clip.activation in a config); heads are then width // 64."
        )
    _known_heads(file, state, heads)
    return state, convert.infer_spec(state, activation=activation or declared, **heads)


def _known_heads(file: pathlib.Path, state: dict[str, np.ndarray], heads: dict[str, int]) -> None:
    """Fills the heads no config declared from the known variants (in place).

    Raises ValueError for a width no variant explains.
    """
    widths = convert.infer_spec(state, vision_heads=1, text_heads=1)  # widths only
    for tower in ("vision", "text"):
        if f"{tower}_heads" in heads:
            continue
        width = getattr(widths, f"{tower}_width")
        known = known_heads(tower, width)
        if known is None:
            raise ValueError(
                f"{file} does not say how many attention heads its {tower} tower of width {width} "
                f"has, and no known variant has that width (width // 64 = {width // 64} is wrong "
                "for some: open_clip's ViT-H/14 has 16 heads of 80 at width 1280): pass "
                f"{tower}_heads= to clip.load (clip.{tower}_heads in a config), or put the "
                "model's config.json or open_clip_config.json beside it."
            )
        heads[f"{tower}_heads"] = known


def _our_metadata(file: pathlib.Path, metadata: dict[str, str]) -> tuple[dict[str, int], str]:
    """Heads and activation from `save_safetensors`'s metadata; ValueError if they are damaged."""
    try:
        heads = {k: int(metadata[k]) for k in ("vision_heads", "text_heads")}
        if metadata["activation"] not in ACTIVATIONS or min(heads.values()) < 1:
            raise ValueError(metadata["activation"])
    except (KeyError, ValueError) as e:
        found = {k: metadata.get(k) for k in ("vision_heads", "text_heads", "activation")}
        raise ValueError(
            f"{file}: its zegot_jax.clip metadata is damaged ({found}; heads must be "
            f"integers >= 1, activation one of {ACTIVATIONS}): re-save it with "
            "zegot_jax.clip.save_safetensors, or pass activation=, vision_heads= and "
            "text_heads= to clip.load."
        ) from e
    return heads, metadata["activation"]


def _open_clip_config(path: pathlib.Path) -> tuple[dict[str, int], str]:
    """Heads and activation of an `open_clip_config.json` (GELU unless it says QuickGELU)."""
    model_cfg = json.loads(path.read_text()).get("model_cfg", {})
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    heads = {}
    if "width" in vision:
        heads["vision_heads"] = int(vision["width"]) // int(vision.get("head_width", 64))
    if "heads" in text:
        heads["text_heads"] = int(text["heads"])
    return heads, "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"


def _hf_config(path: pathlib.Path) -> tuple[dict[str, int], str]:
    config = json.loads(path.read_text())
    try:
        towers = {"vision": config["vision_config"], "text": config["text_config"]}
    except KeyError as e:
        raise ValueError(f"{path} is not a CLIPModel config (no {e}).") from e
    acts = {t: c.get("hidden_act", "quick_gelu") for t, c in towers.items()}
    if acts["vision"] != acts["text"] or acts["vision"] not in ("quick_gelu", "gelu"):
        raise ValueError(
            f"{path}: unsupported activations {acts}; both towers must use 'quick_gelu' or both 'gelu'."
        )
    for tower, c in towers.items():
        if abs(c.get("layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
            raise ValueError(f"{path}: {tower} layer_norm_eps {c['layer_norm_eps']} != 1e-5.")
    heads = {
        f"{t}_heads": int(c["num_attention_heads"]) for t, c in towers.items() if "num_attention_heads" in c
    }
    return heads, acts["vision"]


def load(
    path_or_hub_id: str | os.PathLike,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    activation: str | None = None,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    offline: bool = False,
) -> CLIP:
    """Builds a `CLIP` from a checkpoint; the variant is read from the weights' shapes.

    Args:
        path_or_hub_id: a file, a directory, a variant name ('ViT-B/16') or a hub id.
        dtype: compute dtype of the model.
        param_dtype: dtype the parameters are stored in (fp16/bf16 checkpoints become float32
            unless this says otherwise).
        activation: 'quick_gelu' or 'gelu' to override what the checkpoint implies; required
            for a bare state dict with no config beside it (see `read_checkpoint`).
        vision_heads: attention heads of the vision tower, overriding what the checkpoint
            implies; needed for a bare state dict whose widths are not a known variant's.
        text_heads: the same for the text tower.
        offline: a hub id or variant name is read from the Hugging Face cache only (no
            download; FileNotFoundError if it is not there).

    Raises:
        FileNotFoundError: nothing at the path and not fetchable.
        ValueError: not a CLIP checkpoint, unreadable, or names/shapes that do not match the
            model (all missing, unexpected and mis-shaped names are listed).
    """
    state, spec = read_checkpoint(
        _resolve(path_or_hub_id, offline), activation, vision_heads=vision_heads, text_heads=text_heads
    )
    abstract = nnx.eval_shape(lambda: CLIP(spec, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
    graphdef, abstract_state = nnx.split(abstract)
    targets = dict(nnx.to_flat_state(abstract_state))
    arrays, seen, unexpected, misshaped, not_float, not_finite = {}, set(), [], [], {}, []
    for name, value in state.items():
        if convert.IGNORED_KEYS.search(name):
            continue
        path, layout = convert.openai_to_path(name, set(targets))
        if path not in targets:
            unexpected.append(name)
            continue
        seen.add(path)
        value = convert.to_model_layout(np.asarray(value), layout)
        if not jnp.issubdtype(value.dtype, jnp.floating):
            not_float[name] = str(value.dtype)
        elif not np.isfinite(value.astype(np.float32, copy=False)).all():
            not_finite.append(name)
        if value.size == 1 and math.prod(targets[path].shape) == 1:  # logit_scale: () or (1,)
            value = value.reshape(targets[path].shape)
        if tuple(value.shape) != tuple(targets[path].shape):
            misshaped.append(f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(targets[path].shape)}")
            continue
        arrays[path] = jnp.asarray(value, param_dtype)
    missing = [convert.path_to_openai(p)[0] for p in targets if p not in seen]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"Checkpoint {path_or_hub_id} does not match CLIP {spec}:\n"
            f"  missing: {missing}\n  unexpected: {unexpected}\n"
            f"  mis-shaped: {misshaped}"
        )
    _check_values(path_or_hub_id, not_float, not_finite)
    for path, variable in targets.items():
        variable.set_value(arrays[path])
    return nnx.merge(graphdef, nnx.from_flat_state(targets))


def _check_values(source, not_float: dict[str, str], not_finite: list[str]) -> None:
    """Raises ValueError (one line) for integer or NaN/Inf weights, which load but score nothing."""

    def names(items) -> str:
        items = list(items)
        return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    if not_float:
        raise ValueError(
            f"Checkpoint {source} holds {'/'.join(sorted(set(not_float.values())))} "
            f"tensors where CLIP weights are floats ({names(not_float)}): it is not "
            "a float CLIP checkpoint (quantised or another kind of file); use the "
            "float16/bfloat16/float32 weights."
        )
    if not_finite:
        raise ValueError(
            f"Checkpoint {source} holds non-finite values (NaN or Inf) in "
            f"{len(not_finite)} tensor{'s' * (len(not_finite) > 1)}: "
            f"{names(not_finite)}; the file is damaged or was saved from a diverged "
            "model: use another copy."
        )


def state_dict(model: CLIP) -> dict[str, np.ndarray]:
    """The model's parameters under OpenAI's names and layouts (float32 numpy)."""
    out = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, layout = convert.path_to_openai(path)
        value = np.asarray(jax.device_get(variable[...]), np.float32)
        out[name] = convert.from_model_layout(value, layout).copy(order="C")
    return out


def save_safetensors(model: CLIP, path: str | os.PathLike) -> None:
    """Writes the model in OpenAI's layout, with heads and activation in the metadata."""
    from safetensors.numpy import save_file

    spec = model.spec
    metadata = {
        "format": _SAFETENSORS_FORMAT,
        "vision_heads": str(spec.vision_heads),
        "text_heads": str(spec.text_heads),
        "activation": spec.activation,
    }
    save_file(state_dict(model), str(path), metadata=metadata)
