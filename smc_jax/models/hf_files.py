"""Reading HuggingFace checkpoint directories: weights files (safetensors, sharded safetensors, Flax msgpack,
PyTorch ``.bin``) into numpy arrays keyed by name, ``config.json``, and resolving a hub id or local path.

Safetensors files are memory-mapped by a small reader here (bf16 through ml_dtypes); ``pytorch_model.bin``
needs torch and is read with ``weights_only=True``. :mod:`smc_jax.models.hf` maps the arrays onto modules.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from flax import serialization, traverse_util

Key = tuple[str, ...]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested module (one-line message)."""


# ----------------------------------------------------------------------------------------------- readers

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: Path) -> dict[Key, np.ndarray]:
    """Memory-mapped tensors of one ``.safetensors`` file, keyed by the ``.``-split names."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size) if header else None
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        out[tuple(name.split("."))] = data[start:end].view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def read_torch_bin(path: Path) -> dict[Key, np.ndarray]:
    """Tensors of a ``pytorch_model.bin`` (``torch.load(weights_only=True)``; bf16 widened to float32)."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path} is a PyTorch checkpoint and torch is not installed "
                              "(install torch, or convert the checkpoint to safetensors)") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {tuple(k.split(".")): (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}


def read_flax_msgpack(path: Path) -> dict[Key, np.ndarray]:
    """Leaves of a HF-Flax ``flax_model.msgpack`` (``flax.serialization`` bytes of the params dict)."""
    tree = serialization.msgpack_restore(path.read_bytes())
    tree = tree["params"] if set(tree) == {"params"} else tree
    # shards of a sharded checkpoint may hold "/"-joined keys
    return {tuple(p for part in k for p in part.split("/")): np.asarray(v)
            for k, v in traverse_util.flatten_dict(tree).items()}


def _sharded(reader: Callable[[Path], dict[Key, np.ndarray]]) -> Callable[[Path], dict[Key, np.ndarray]]:
    def read(index: Path) -> dict[Key, np.ndarray]:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[Key, np.ndarray] = {}
        for name in files:
            out.update(reader(index.parent / name))
        return out

    return read


# (file name, layout, reader), in order of preference.
WEIGHT_FILES: tuple[tuple[str, str, Callable[[Path], dict[Key, np.ndarray]]], ...] = (
    ("model.safetensors", "torch", read_safetensors),
    ("model.safetensors.index.json", "torch", _sharded(read_safetensors)),
    ("flax_model.msgpack", "flax", read_flax_msgpack),
    ("flax_model.msgpack.index.json", "flax", _sharded(read_flax_msgpack)),
    ("pytorch_model.bin", "torch", read_torch_bin),
    ("pytorch_model.bin.index.json", "torch", _sharded(read_torch_bin)),
)


def read_weights(checkpoint_dir: str | os.PathLike) -> tuple[dict[Key, np.ndarray], str, Path]:
    """``(tensors keyed by path tuples, layout 'torch' | 'flax', file)`` of the preferred weights file."""
    directory = Path(checkpoint_dir)
    for name, layout, reader in WEIGHT_FILES:
        if (directory / name).is_file():
            return reader(directory / name), layout, directory / name
    raise CheckpointError(f"no weights in {directory} (looked for {', '.join(n for n, _, _ in WEIGHT_FILES)})")


# ------------------------------------------------------------------------------------------- resolution

_HUB_META = ["*.json", "*.txt", "*.model"]  # config and tokenizer files
_HUB_WEIGHTS = (["model*.safetensors*"], ["flax_model*.msgpack*"], ["pytorch_model*.bin*"])


def _has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name, _, _ in WEIGHT_FILES)


def resolve_checkpoint_dir(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local checkpoint directory, or a hub id downloaded (config, tokenizer, one weights format) into the
    HF cache; offline (``HF_HUB_OFFLINE=1``) a hub id resolves only from that cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise CheckpointError(f"{name!r} is not a checkpoint directory")
    import huggingface_hub
    from huggingface_hub import constants

    try:
        directory = Path(huggingface_hub.snapshot_download(name, revision=revision, allow_patterns=_HUB_META))
        for patterns in _HUB_WEIGHTS:
            if _has_weights(directory):
                break
            directory = Path(huggingface_hub.snapshot_download(name, revision=revision, allow_patterns=patterns))
    except Exception as e:  # hub errors: not cached offline, unknown repo, network
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(f"{name!r} is not a local directory and not in the HuggingFace cache "
                                  "(HF_HUB_OFFLINE=1: download it once online, or pass a directory)") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"cannot fetch {name!r} from the HuggingFace hub ({type(e).__name__}: {first})") from e
    return directory


def read_config(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory."""
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no config.json in {checkpoint_dir}")
    return json.loads(path.read_text())
