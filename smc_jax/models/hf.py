"""Load HuggingFace checkpoints (hub id or local directory) into the Flax params of our modules.

``from_pretrained(name_or_path, head)`` = :func:`resolve_checkpoint_dir` (a local directory, or
``huggingface_hub.snapshot_download`` of the config, tokenizer files and one weights format) +
:func:`build_module` (architecture from ``config.json``'s ``model_type``) + :func:`load_params`.

Weights formats, first found wins: ``model.safetensors`` (or its sharded ``.index.json``),
``flax_model.msgpack`` (or its index), ``pytorch_model.bin`` (or its index; needs torch, read with
``weights_only=True``). Safetensors files are memory-mapped by a small reader here (bf16 through ml_dtypes).

Names: our param paths are HF-Flax's, so a Flax checkpoint maps by identity and a PyTorch one by an explicit
per-family map (:attr:`Family.torch_names`: ``kernel`` <- ``weight`` transposed, ``scale`` <- LayerNorm
``weight``, ``embedding`` <- ``weight``). Checkpoints saved from the base model (no ``roberta.``/``bert.``
prefix) and from head models load into either. Loading is strict: a missing encoder tensor, an unexpected
tensor, a shape mismatch or weights of another model type raise :class:`CheckpointError` (one line, naming
the keys). Tolerated and logged as HF does: buffers and tied copies, heads the module does not use (e.g.
``lm_head`` under a classifier, BERT's NSP ``cls.seq_relationship``), and heads/poolers the checkpoint lacks,
which are newly initialised like HF's ``_init_weights`` (normal(``initializer_range``) kernels and
embeddings, zero biases, unit LayerNorm scales).

New families (mBART, ESM) add a :class:`Family` to :data:`FAMILIES`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import serialization, traverse_util

from smc_jax.models import bert

log = logging.getLogger(__name__)

Key = tuple[str, ...]
Dtype = Any


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


# -------------------------------------------------------------------------------------------- families


def hf_torch_names(path: Key) -> tuple[tuple[Key, ...], bool]:
    """HF-Flax param path -> (candidate PyTorch keys, transpose?) under HF's naming conventions."""
    *mods, leaf = path
    mods = tuple(mods)
    if leaf == "kernel":
        return (mods + ("weight",),), True
    if leaf == "embedding":
        return (mods + ("weight",),), False
    if leaf == "scale":  # LayerNorm; gamma/beta in old TF-converted checkpoints
        return (mods + ("weight",), mods + ("gamma",)), False
    if leaf == "bias":
        return (mods + ("bias",), mods + ("beta",)), False
    return (path,), False


@dataclasses.dataclass(frozen=True)
class Family:
    """How one HF ``model_type`` builds and loads.

    ``prefix``: HF ``base_model_prefix`` (the base model's name inside head models). ``heads``: top-level
    head modules outside the base; ``optional_base``: modules inside the base that HF also initialises when
    a checkpoint lacks them (a pooler). Both may be newly initialised when missing and are ignored when the
    module does not use them. ``ignored``: regexes over ``.``-joined checkpoint keys that are always
    ignorable (buffers, tied copies, heads no module of the family has). ``aliases``: checkpoint keys for a
    param path tried before :attr:`torch_names` (all found ones count as used).
    """

    model_type: str
    prefix: str
    build: Callable[..., nn.Module]  # (config dict, head, dtype, **kwargs) -> module
    heads: tuple[str, ...]
    optional_base: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    aliases: Mapping[Key, tuple[Key, ...]] = dataclasses.field(default_factory=dict)
    torch_names: Callable[[Key], tuple[tuple[Key, ...], bool]] = hf_torch_names

    def top(self, path: Key) -> str:
        """The module a path belongs to, below the base prefix."""
        return path[1] if path[0] == self.prefix and len(path) > 1 else path[0]

    def candidates(self, path: Key, layout: str) -> tuple[tuple[Key, ...], bool]:
        if layout == "flax":
            return (path,), False
        keys, transpose = self.torch_names(path)
        return self.aliases.get(path, ()) + keys, transpose


def _build_bert(config: Mapping[str, Any], head: str | None, dtype: Dtype, **kwargs: Any) -> nn.Module:
    fields = {f.name for f in dataclasses.fields(bert.EncoderConfig)}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    return bert.build(bert.EncoderConfig.from_hf(config, **overrides), head, dtype, **kwargs)


def _bert_like(model_type: str) -> Family:
    return Family(
        model_type=model_type, prefix=model_type, build=_build_bert,
        heads=("classifier", "lm_head", "cls", "qa_outputs"), optional_base=("pooler",),
        ignored=(r"(^|\.)embeddings\.(position_ids|token_type_ids)$",
                 r"^(lm_head|cls\.predictions)\.decoder\.weight$",  # tied to the word embeddings
                 r"^cls\.seq_relationship\."),  # BertForPreTraining's next-sentence head
        # the output bias: ``decoder.bias`` is the live one in transformers-5 untied checkpoints (the head's
        # ``bias`` is then unused); everywhere else the two are tied, and safetensors keep only ``bias``
        aliases={("lm_head", "bias"): (("lm_head", "decoder", "bias"),),
                 ("cls", "predictions", "bias"): (("cls", "predictions", "decoder", "bias"),)},
    )


FAMILIES: dict[str, Family] = {name: _bert_like(name) for name in ("bert", "roberta")}


def family_of(config: Mapping[str, Any]) -> Family:
    """The :class:`Family` of a ``config.json`` dict (error listing the supported ``model_type`` s)."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(f"model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


# ---------------------------------------------------------------------------------------------- loading


def build_module(config: Mapping[str, Any], head: str | None = None, dtype: Dtype = jnp.float32,
                 **module_kwargs: Any) -> nn.Module:
    """The module for a ``config.json`` dict. ``module_kwargs`` naming config fields (``num_labels``,
    ``hidden_dropout_prob``, ...) override the config; the rest (``remat``, ``add_pooling_layer``, ...) go to
    the module."""
    return family_of(config).build(config, head, dtype, **module_kwargs)


def abstract_params(module: nn.Module) -> dict[str, Any]:
    """The module's params as boxed ``ShapeDtypeStruct`` s, nothing allocated (``nn.get_partition_spec`` of
    it gives the logical axes). Loadable modules define ``dummy_inputs()``, the positional ``init`` inputs."""
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *module.dummy_inputs()))
    return variables["params"]


def _show(keys: list[str], limit: int = 20) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + more + "]"


def _align_prefix(tensors: dict[Key, np.ndarray], family: Family, expected: Mapping[Key, Any], where: Path,
                  ) -> dict[Key, Key]:
    """Map checkpoint keys to the module's prefix convention: ``{aligned key: original key}``."""
    model_prefixed = any(p[0] == family.prefix for p in expected)
    ckpt_prefixed = any(k[0] == family.prefix for k in tensors)
    base_tops = {family.top(p) for p in expected} - set(family.heads)
    if not ckpt_prefixed and not any(k[0] in base_tops for k in tensors):
        others = sorted({k[0] for k in tensors} & {f.prefix for f in FAMILIES.values()})
        if others:
            raise CheckpointError(f"{where} holds {others[0]!r} weights (keys {others[0]}.*) but its config "
                                  f"says model_type {family.model_type!r}")
    aligned = {}
    for key in tensors:
        new = key
        if model_prefixed and not ckpt_prefixed and key[0] not in family.heads:
            new = (family.prefix,) + key
        elif not model_prefixed and ckpt_prefixed and key[0] == family.prefix:
            new = key[1:]
        aligned[new] = key
    return aligned


def _new_leaf(path: Key, shape: tuple[int, ...], dtype: Dtype, std: float, rng: np.random.Generator
              ) -> np.ndarray:
    leaf = path[-1]
    if leaf in ("kernel", "embedding"):
        return (rng.standard_normal(shape) * std).astype(dtype)
    if leaf == "bias":
        return np.zeros(shape, dtype)
    if leaf == "scale":
        return np.ones(shape, dtype)
    raise CheckpointError(f"no initialiser for new parameter {'/'.join(path)}")


def load_params(module: nn.Module, checkpoint_dir: str | os.PathLike, *, config: Mapping[str, Any] | None = None,
                seed: int = 0) -> dict[str, Any]:
    """The module's params (nested dict of host ``numpy`` arrays in ``module.param_dtype``) from a checkpoint
    directory; see the module docstring for what is strict and what is tolerated."""
    directory = Path(checkpoint_dir)
    config = read_config(directory) if config is None else config
    family = family_of(config)
    name = type(module).__name__
    expected = traverse_util.flatten_dict(nn.meta.unbox(abstract_params(module)))
    tensors, layout, file = read_weights(directory)
    aligned = _align_prefix(tensors, family, expected, directory)
    sep = "/" if layout == "flax" else "."
    show = lambda key: sep.join(aligned.get(key, key))  # noqa: E731  (the name as the checkpoint spells it)
    dtype = getattr(module, "param_dtype", jnp.float32)
    std = float(config.get("initializer_range", 0.02))
    rng = np.random.default_rng(seed)
    params, consumed, missing, new = {}, set(), [], []
    for path, spec in expected.items():
        keys, transpose = family.candidates(path, layout)
        found = [k for k in keys if k in aligned]
        if not found:
            optional = family.top(path) in family.heads + family.optional_base
            (new if optional else missing).append(path)
            continue
        consumed.update(found)
        array = tensors[aligned[found[0]]]
        want = tuple(reversed(spec.shape)) if transpose else tuple(spec.shape)
        if tuple(array.shape) != want:
            raise CheckpointError(f"shape mismatch for {show(found[0])} in {file.name}: checkpoint has "
                                  f"{tuple(array.shape)}, {name} expects {want}")
        params[path] = np.asarray(array.T if transpose else array, dtype=dtype)
    if missing:
        names = [show(p if layout == "flax" else family.torch_names(p)[0][0]) for p in missing]
        raise CheckpointError(f"{file} lacks {len(missing)} tensor(s) that {name} needs: {_show(names)}")
    used_tops = {family.top(p) for p in expected}
    unused = [k for k in aligned if k not in consumed]
    ignored, unexpected = [], []
    for key in unused:
        top = family.top(key)
        skip = (any(re.search(rx, ".".join(key)) for rx in family.ignored)
                or (top in family.heads + family.optional_base and top not in used_tops))
        (ignored if skip else unexpected).append(show(key))
    if unexpected:
        raise CheckpointError(f"{file} has {len(unexpected)} tensor(s) that {name} does not use: "
                              f"{_show(sorted(unexpected))}")
    if ignored:
        log.warning("Some weights of the checkpoint at %s were not used when initializing %s: %s",
                    directory, name, _show(sorted(ignored)))
    for path in new:
        params[path] = _new_leaf(path, tuple(expected[path].shape), dtype, std, rng)
    if new:
        log.warning("Some weights of %s were not initialized from the checkpoint at %s and are newly "
                    "initialized: %s", name, directory, _show(["/".join(p) for p in new]))
    return traverse_util.unflatten_dict(params)


def from_pretrained(name_or_path: str | os.PathLike, head: str | None = None, dtype: Dtype = jnp.float32, *,
                    model_type: str | None = None, revision: str | None = None, seed: int = 0,
                    **module_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """``(module, params)`` for a hub id or local directory.

    ``head``: None (base encoder), ``'multiple_choice'``, ``'sequence_classification'`` or ``'masked_lm'``.
    ``dtype``: computation dtype (params stay float32). ``model_type``: when given, the checkpoint's must
    match. ``seed``: for heads the checkpoint lacks. ``module_kwargs``: see :func:`build_module`.
    """
    directory = resolve_checkpoint_dir(name_or_path, revision)
    config = read_config(directory)
    if model_type is not None and config.get("model_type") != model_type:
        raise CheckpointError(f"{name_or_path} is a {config.get('model_type')!r} checkpoint, "
                              f"expected model_type {model_type!r}")
    module = build_module(config, head, dtype, **module_kwargs)
    params = load_params(module, directory, config=config, seed=seed)
    return module, jax.tree.map(jnp.asarray, params)
