"""Load HuggingFace checkpoints (hub id or local directory) into the Flax params of our modules.

``from_pretrained(name_or_path, head)`` = :func:`resolve_checkpoint_dir` (a local directory, or
``huggingface_hub.snapshot_download`` of the config, tokenizer files and one weights format) +
:func:`build_module` (architecture from ``config.json``'s ``model_type``) + :func:`load_params`.

Weights formats (read by :mod:`smc_jax.models.hf_files`), first found wins: ``model.safetensors`` (or its
sharded ``.index.json``), ``flax_model.msgpack`` (or its index), ``pytorch_model.bin`` (or its index).

Names: our param paths are HF-Flax's, so a Flax checkpoint maps by identity and a PyTorch one by an explicit
per-family map (:attr:`Family.torch_names`: ``kernel`` <- ``weight`` transposed, ``scale`` <- LayerNorm
``weight``, ``embedding`` <- ``weight``). Checkpoints saved from the base model (no ``roberta.``/``bert.``/
``esm.`` prefix) and from head models load into either. Loading is strict: a missing encoder tensor, an unexpected
tensor, a shape mismatch or weights of another model type raise :class:`CheckpointError` (one line, naming
the keys). Tolerated and logged as HF does: buffers and tied copies, heads the module does not use (e.g.
``lm_head`` under a classifier, BERT's NSP ``cls.seq_relationship``), and heads/poolers the checkpoint lacks,
which are newly initialised like HF's ``_init_weights`` (normal(``initializer_range``) kernels and
embeddings, zero biases, unit LayerNorm scales).

Families: ``bert``, ``roberta`` (:mod:`~smc_jax.models.bert`) and ``esm`` (:mod:`~smc_jax.models.esm`, base
encoder only; ``contact_head``, ``pooler``, ``lm_head`` and ESM-2's unused ``position_embeddings`` are
skipped; the rotary ``inv_freq`` buffer, per layer or model-level, becomes the config's
``rotary_inv_freq``) and ``mbart`` (:mod:`~smc_jax.models.mbart`, ``MBartForConditionalGeneration``; the shared
embedding from the first present of ``model.shared.weight``, ``model.{encoder,decoder}.embed_tokens.weight`` and
``lm_head.weight``; ``final_logits_bias`` zeros when absent; the vocabulary as stored, see
:mod:`~smc_jax.models.mbart_vocab` for the fairseq layout). New families add a :class:`Family` to :data:`FAMILIES`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from smc_jax.models import bert, esm, mbart
from smc_jax.models.hf_files import (  # noqa: F401  (re-exported: the loader's public surface)
    WEIGHT_FILES,
    CheckpointError,
    Key,
    read_config,
    read_flax_msgpack,
    read_safetensors,
    read_torch_bin,
    read_weights,
    resolve_checkpoint_dir,
)

log = logging.getLogger(__name__)

Dtype = Any
Tensors = Mapping[Key, np.ndarray]


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
    param path tried before :attr:`torch_names` (all found ones count as used). ``marker``: a regex over
    ``.``-joined keys that every checkpoint of the family matches and other families' do not (it names the
    family of unprefixed weights). ``from_weights``: ``(config dict, tensors) -> config overrides`` that the
    weights fix (ESM's rotary frequencies); the module must be built with them. ``config_tensors``: a regex
    of the keys ``from_weights`` reads (also list them in ``ignored``; they are not reported when read).
    """

    model_type: str
    prefix: str
    build: Callable[..., nn.Module]  # (config dict, head, dtype, **kwargs) -> module
    heads: tuple[str, ...]
    optional_base: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    aliases: Mapping[Key, tuple[Key, ...]] = dataclasses.field(default_factory=dict)
    torch_names: Callable[[Key], tuple[tuple[Key, ...], bool]] = hf_torch_names
    marker: str | None = None
    from_weights: Callable[[Mapping[str, Any], Tensors], dict[str, Any]] | None = None
    config_tensors: str | None = None

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
        marker=r"(^|\.)attention\.output\.LayerNorm\.",
    )


def _build_esm(config: Mapping[str, Any], head: str | None, dtype: Dtype, **kwargs: Any) -> nn.Module:
    if head is not None:
        raise ValueError(f"head {head!r} unknown for ESM: only the base encoder (head=None) is built; pool its "
                         "last_hidden_state and add the task's head")
    fields = {f.name for f in dataclasses.fields(esm.EsmConfig)}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    return esm.EsmModel(esm.EsmConfig.from_hf(config, **overrides), dtype=dtype, **kwargs)


def _esm_inv_freq(config: Mapping[str, Any], tensors: Tensors) -> dict[str, Any]:
    """``{'rotary_inv_freq': ...}`` from a rotary checkpoint's ``inv_freq`` buffer(s), model-level or per layer
    (HF keeps the first; they must agree); ``{}`` for absolute positions or when the checkpoint has none."""
    if not esm.EsmConfig.from_hf(config).rotary:
        return {}
    found = [np.asarray(v, np.float32).reshape(-1) for k, v in sorted(tensors.items())
             if k[-2:] == ("rotary_embeddings", "inv_freq")]
    if not found:
        return {}
    if any(f.shape != found[0].shape or not np.array_equal(f, found[0]) for f in found[1:]):
        raise CheckpointError(f"the checkpoint's {len(found)} rotary inv_freq tensors differ; keep one model-level "
                              "rotary_embeddings.inv_freq")
    return {"rotary_inv_freq": tuple(float(v) for v in found[0])}


def _build_mbart(config: Mapping[str, Any], head: str | None, dtype: Dtype, **kwargs: Any) -> nn.Module:
    if head is not None:
        raise ValueError(f"head {head!r} unknown for mBART: head=None builds MBartForConditionalGeneration (the "
                         "output projection is the tied shared embedding)")
    fields = {f.name for f in dataclasses.fields(mbart.MBartConfig)}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    try:
        mbart_config = mbart.MBartConfig.from_hf(config, **overrides)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return mbart.MBartForConditionalGeneration(mbart_config, dtype=dtype, **kwargs)


_MBART_SHARED = ("model", "shared", "embedding")

FAMILIES: dict[str, Family] = {name: _bert_like(name) for name in ("bert", "roberta")}
FAMILIES["esm"] = Family(
    model_type="esm", prefix="esm", build=_build_esm, heads=("lm_head",), optional_base=("pooler",),
    ignored=(r"(^|\.)embeddings\.position_ids$",
             r"(^|\.)rotary_embeddings\.inv_freq$",  # a config constant (see from_weights)
             r"(^|\.)embeddings\.position_embeddings\.weight$",  # present but unused in ESM-2 checkpoints
             r"(^|\.)contact_head\."),
    marker=r"(^|\.)encoder\.emb_layer_norm_after\.",
    from_weights=_esm_inv_freq, config_tensors=r"(^|\.)rotary_embeddings\.inv_freq$",
)


FAMILIES["mbart"] = Family(
    model_type="mbart", prefix="model", build=_build_mbart, heads=("final_logits_bias",),
    aliases={_MBART_SHARED: (("model", "shared", "weight"), ("model", "encoder", "embed_tokens", "weight"),
                             ("model", "decoder", "embed_tokens", "weight"), ("lm_head", "weight"))},
    marker=r"(^|\.)encoder_attn_layer_norm\.",
)


def family_of(config: Mapping[str, Any]) -> Family:
    """The :class:`Family` of a ``config.json`` dict (error listing the supported ``model_type`` s)."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(f"model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


# ---------------------------------------------------------------------------------------------- loading


def build_module(config: Mapping[str, Any], head: str | None = None, dtype: Dtype = jnp.float32, *,
                 checkpoint_dir: str | os.PathLike | None = None, **module_kwargs: Any) -> nn.Module:
    """The module for a ``config.json`` dict. ``module_kwargs`` naming config fields (``num_labels``,
    ``hidden_dropout_prob``, ...) override the config; the rest (``remat``, ``add_pooling_layer``, ...) go to
    the module. ``checkpoint_dir``: also take the config fields its weights fix (ESM-2's rotary frequencies;
    :func:`load_params` refuses a module built without them)."""
    family = family_of(config)
    if checkpoint_dir is not None and family.from_weights is not None:
        module_kwargs = {**family.from_weights(config, read_weights(checkpoint_dir)[0]), **module_kwargs}
    return family.build(config, head, dtype, **module_kwargs)


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
    names = [".".join(k) for k in tensors]
    if family.marker and not any(re.search(family.marker, n) for n in names):
        for other in FAMILIES.values():
            hit = next((n for n in names if other.marker and re.search(other.marker, n)), None)
            if hit and other.marker != family.marker:
                raise CheckpointError(f"{where} holds {other.model_type!r} weights (keys like {hit}) but its "
                                      f"config says model_type {family.model_type!r}")
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
    if leaf == "bias" or leaf.endswith("_bias"):  # mBART's final_logits_bias: zeros, as HF
        return np.zeros(shape, dtype)
    if leaf == "scale":
        return np.ones(shape, dtype)
    raise CheckpointError(f"no initialiser for new parameter {'/'.join(path)}")


def _check_from_weights(module: nn.Module, family: Family, config: Mapping[str, Any], tensors: Tensors,
                        file: Path) -> dict[str, Any]:
    """What the weights fix (:attr:`Family.from_weights`); refuses a module whose config disagrees."""
    derived = {} if family.from_weights is None else family.from_weights(config, tensors)
    for field, value in derived.items():
        have = getattr(getattr(module, "config", None), field, None)
        same = have is not None and np.shape(have) == np.shape(value) and np.allclose(
            np.asarray(have, np.float64), np.asarray(value, np.float64), rtol=1e-6, atol=0)
        if not same:
            raise CheckpointError(f"{file} fixes {field} and {type(module).__name__}'s config differs; build the "
                                  "module with from_pretrained or build_module(config, checkpoint_dir=...)")
    return derived


def load_params(module: nn.Module, checkpoint_dir: str | os.PathLike, *, config: Mapping[str, Any] | None = None,
                seed: int = 0, weights: tuple[dict[Key, np.ndarray], str, Path] | None = None) -> dict[str, Any]:
    """The module's params (nested dict of host ``numpy`` arrays in ``module.param_dtype``) from a checkpoint
    directory; see the module docstring for what is strict and what is tolerated. ``weights``: the
    directory's :func:`read_weights`, when already read."""
    directory = Path(checkpoint_dir)
    config = read_config(directory) if config is None else config
    family = family_of(config)
    name = type(module).__name__
    expected = traverse_util.flatten_dict(nn.meta.unbox(abstract_params(module)))
    tensors, layout, file = read_weights(directory) if weights is None else weights
    derived = _check_from_weights(module, family, config, tensors, file)
    read_into_config = bool(derived) and family.config_tensors is not None
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
        if read_into_config and re.search(family.config_tensors, ".".join(key)):
            continue
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

    ``head``: None (base encoder), ``'multiple_choice'``, ``'sequence_classification'`` or ``'masked_lm'``
    (BERT/RoBERTa; ESM has only the base encoder; mBART's None is ``MBartForConditionalGeneration``).
    ``dtype``: computation dtype (params stay float32).
    ``model_type``: when given, the checkpoint's must match. ``seed``: for heads the checkpoint lacks.
    ``module_kwargs``: see :func:`build_module`.
    """
    directory = resolve_checkpoint_dir(name_or_path, revision)
    config = read_config(directory)
    if model_type is not None and config.get("model_type") != model_type:
        raise CheckpointError(f"{name_or_path} is a {config.get('model_type')!r} checkpoint, "
                              f"expected model_type {model_type!r}")
    family = family_of(config)
    weights = read_weights(directory)
    if family.from_weights is not None:
        module_kwargs = {**family.from_weights(config, weights[0]), **module_kwargs}
    module = family.build(config, head, dtype, **module_kwargs)
    params = load_params(module, directory, config=config, seed=seed, weights=weights)
    return module, jax.tree.map(jnp.asarray, params)
