"""The T5X-style gin command line of train and sweep: flags, parsing, macros and bound values.

Command line (T5X conventions)::

    scripts/train.py --gin_file=gin/mawps_rigl.gin --gin.SPARSITY=0.9 --gin.DATA_DIR="'../shared/data/x'"

- ``--gin_file=F`` / ``--gin_file F`` (repeatable): top-level gin files, found as given (relative to the
  working directory) or in a search path (the repo's ``gin/``, :data:`GIN_DIR`); ``include`` statements
  inside them are resolved against the search paths first, then the working directory.
- ``--gin_bindings=B`` / ``--gin_bindings B`` (repeatable; one flag may hold several newline-separated
  bindings, kept together as one entry and parsed as a unit).
- ``--gin.NAME=VALUE`` is the binding ``NAME=VALUE``; ``NAME`` is a macro (``SPARSITY``), a parameter
  (``train.log_every``) or a scoped parameter (``scope/fn.param``). ``VALUE`` is gin syntax, so strings
  need quotes: ``--gin.DATA_DIR="'path'"``; ``None``, ``0.5``, ``'all'``, ``%OTHER_MACRO`` all work.

Files are parsed first, then the bindings in the order given (later wins). A binding to a macro that the
*files* do not define is an error (gin alone would silently create the macro); so is a ``%MACRO`` that
nothing defines. Every failure is a :class:`ConfigError` with a one-line message (:mod:`.gin_errors`).

How macros are detected (gin-config 0.5): a statement ``X = 1`` is stored by ``gin.parse_config`` as the
binding ``X/gin.macro.value = 1``, i.e. under the key ``('X', 'gin.macro')`` of ``gin.config._CONFIG``
(the dict of ``(scope, complete selector) -> {param: value}``), so the macro names are the scopes of the
keys whose selector is ``gin.macro``, and the bindings of a configurable are the entries of its keys. Values
are read back through the public ``gin.query_parameter('X/gin.macro.value')``. Should a future gin drop
``_CONFIG``, macro names fall back to the ``NAME = value`` lines (no dot in the name) of ``gin.config_str()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gin

from smc_jax.cli.gin_errors import (
    MACRO_SELECTOR,
    ConfigError,
    binding_error,
    check_binding,
    check_macro_references,
    file_error,
    file_not_found,
    first_line,
    no_file_message,
)

__all__ = [
    "GIN_DIR",
    "ConfigError",
    "binding_value",
    "config_str",
    "configurable_bindings",
    "defined_macros",
    "finalize",
    "macro_value",
    "operative_config",
    "parse_command_line",
    "parse_config",
    "split_gin_args",
]

GIN_DIR = Path(__file__).resolve().parents[2] / "gin"  # the repo's gin files: the search path of the CLI
_CONSTANT_SELECTOR = "gin.constant"  # ``%gin.REQUIRED`` and other ``gin.constant``s
_FLAG_EXAMPLES = {"--gin_file": "gin/mawps_rigl.gin", "--gin_bindings": "'SPARSITY = 0.9'"}


# --------------------------------------------------------------------------------------------- flags


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """``(gin_files, gin_bindings, rest)`` from ``argv`` (without the program name).

    ``--gin_file=F`` / ``--gin_file F`` and ``--gin_bindings=B`` / ``--gin_bindings B`` are repeatable;
    ``--gin.NAME=VALUE`` becomes the binding ``NAME=VALUE``. Bindings keep the order given (later wins).
    Everything else, and everything from a ``--`` on, goes to ``rest`` unchanged. ``--gin.NAME`` without
    ``=VALUE``, or a ``--gin_file`` / ``--gin_bindings`` without a value, is a :class:`ConfigError`."""
    files: list[str] = []
    bindings: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        taken = _take_flag(args, i, {"--gin_file": files, "--gin_bindings": bindings})
        if taken:
            i += taken
            continue
        if arg.startswith("--gin."):
            name, sep, value = arg[len("--gin.") :].partition("=")
            if not sep:
                raise ConfigError(
                    f"{arg} has no value: write --gin.{name or 'NAME'}=VALUE in gin syntax "
                    "(numbers, None, True, quoted strings like --gin.DATA_DIR=\"'path'\")"
                )
            if not name.strip():
                raise ConfigError(f"{arg} names nothing: write --gin.NAME=VALUE (e.g. --gin.SPARSITY=0.9)")
            bindings.append(f"{name}={value}")
        else:
            rest.append(arg)
        i += 1
    return files, bindings, rest


def _take_flag(args: list[str], i: int, targets: dict[str, list[str]]) -> int:
    """How many arguments from ``args[i]`` a ``--FLAG=V`` / ``--FLAG V`` of ``targets`` took (its value
    appended to the flag's list); 0 when ``args[i]`` is none of them."""
    arg = args[i]
    for flag, target in targets.items():
        if arg == flag:
            if i + 1 >= len(args) or args[i + 1].startswith("--") or not args[i + 1].strip():
                raise ConfigError(f"{flag} needs a value, e.g. {flag}={_FLAG_EXAMPLES[flag]}")
            target.append(args[i + 1])
            return 2
        if arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
            if not value.strip():
                raise ConfigError(f"{arg} has an empty value, e.g. {flag}={_FLAG_EXAMPLES[flag]}")
            target.append(value)
            return 1
    return 0


# --------------------------------------------------------------------------------------------- parsing


def parse_config(
    gin_files: Sequence[str],
    bindings: Sequence[str],
    search_paths: Sequence[str | os.PathLike] = (),
) -> None:
    """Clear gin's config, make ``search_paths`` gin's search paths, parse the files then the bindings,
    and validate (see the module docstring). On a :class:`ConfigError` gin's config is left cleared.

    While parsing, the search paths replace gin's global list (the working directory stays on it, last),
    so that a parse does not depend on what was added before; the list is restored afterwards."""
    gin.clear_config()  # also unlocks a finalized config
    paths = [os.fspath(p) for p in search_paths]
    with _search_paths(paths):
        _parse(gin_files, bindings, paths)


def _parse(gin_files: Sequence[str], bindings: Sequence[str], paths: list[str]) -> None:
    try:
        if not gin_files:
            raise ConfigError(no_file_message(paths))
        resolved = [_resolve_file(f, paths) for f in gin_files]
        with _quiet_gin_path_probing():
            for path in resolved:
                try:
                    gin.parse_config_file(path)
                except Exception as e:  # noqa: BLE001 - every gin failure becomes one line
                    raise ConfigError(file_error(e, path, paths)) from e
            file_macros = set(_macro_names())
            for binding in bindings:
                check_binding(binding, file_macros)
                try:
                    gin.parse_config(binding)
                except Exception as e:  # noqa: BLE001
                    raise ConfigError(binding_error(binding, e)) from e
        check_macro_references(set(_macro_names()))
    except ConfigError:
        gin.clear_config()
        raise


def parse_run(files: Sequence[str], bindings: Sequence[str] = ()) -> None:
    """Register smc_jax's configurables with gin and :func:`parse_config` a run's ``files`` and ``bindings``
    with the repo's ``gin/`` as the search path (``smc_jax.train.config.experiment()`` then builds the run)."""
    from smc_jax.train import config

    config.register()
    parse_config(files, bindings, search_paths=[GIN_DIR])


def parse_command_line(argv: Sequence[str], search_paths: Sequence[str | os.PathLike] = ()) -> list[str]:
    """:func:`split_gin_args` then :func:`parse_config`; returns the other arguments."""
    files, bindings, rest = split_gin_args(argv)
    parse_config(files, bindings, search_paths)
    return rest


def finalize() -> None:
    """Lock gin's config (``gin.finalize``: runs finalize hooks; later bindings raise). Optional: nothing in
    :func:`parse_config` needs it. A no-op when already locked; :func:`parse_config` unlocks again."""
    if gin.config_is_locked():
        return
    try:
        gin.finalize()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"gin finalize failed: {first_line(e)}") from e


# --------------------------------------------------------------------------------------------- values


def defined_macros() -> dict[str, object]:
    """The macros of the currently parsed config and their values (after bindings), sorted by name. A
    macro defined as another macro (``A = %B``) gives B's value; ``%gin.REQUIRED`` gives ``gin.REQUIRED``."""
    return {name: macro_value(name) for name in sorted(_macro_names())}


def macro_value(name: str, default: Any = None) -> Any:
    """The current value of macro ``name``, or ``default`` if the config does not define it."""
    value = _query(f"{name}/{MACRO_SELECTOR}.value")
    return default if value is _MISSING else _follow(value)


def binding_value(name: str, default: Any = None) -> Any:
    """The value bound to ``Configurable.param`` (macros followed), or ``default`` when nothing binds it."""
    try:
        value = gin.query_parameter(name)
    except ValueError:
        return default
    return _follow(value)


def configurable_bindings(configurable: type | str) -> dict[str, Any]:
    """The unscoped bindings ``Name.param = value`` of a configurable (a gin-registered class or its name)
    in the parsed config, macros followed: what a class would be called with, without calling it."""
    name = configurable if isinstance(configurable, str) else configurable.__name__
    config = getattr(gin.config, "_CONFIG", {})
    found: dict[str, Any] = {}
    for key, params in list(config.items()):
        if isinstance(key, tuple) and len(key) == 2 and not key[0] and key[1].rsplit(".", 1)[-1] == name:
            found.update({param: _follow(value) for param, value in params.items()})
    return found


def operative_config() -> str:
    """``gin.operative_config_str()``: the bindings *used so far* (only called configurables appear)."""
    return gin.operative_config_str()


def config_str() -> str:
    """``gin.config_str()``: the full parsed config (files + bindings), e.g. for ``WORKDIR/config.gin``."""
    return gin.config_str()


_MISSING = object()


def _query(binding_key: str) -> Any:
    try:
        return gin.query_parameter(binding_key)
    except ValueError:
        return _MISSING


def _follow(value: Any) -> Any:
    """A bound value with ``%MACRO`` references replaced by their values (``A = %B`` chains followed, a
    cycle stops); ``@fn()`` and other references stay as they are."""
    for _ in range(100):
        key = getattr(value, "config_key", None)
        if not (isinstance(key, tuple) and len(key) == 2):
            break
        scope, selector = key
        if selector == MACRO_SELECTOR:
            nxt = _query(f"{scope}/{MACRO_SELECTOR}.value")
        elif selector == _CONSTANT_SELECTOR:
            nxt = _query(scope)
        else:
            break
        if nxt is _MISSING:
            break
        value = nxt
    return value


def _macro_names() -> list[str]:
    """Names of the macros in gin's current config (see the module docstring for how)."""
    names = _macro_names_from_registry()
    if names is None:
        names = _macro_names_from_config_str(gin.config_str())
    return names


def _macro_names_from_registry() -> list[str] | None:
    config = getattr(gin.config, "_CONFIG", None)
    if not isinstance(config, dict):
        return None
    return [k[0] for k in config if isinstance(k, tuple) and len(k) == 2 and k[1] == MACRO_SELECTOR]


_MACRO_LINE = re.compile(r"^([A-Za-z_]\w*(?:/[A-Za-z_]\w*)*)\s*=", re.MULTILINE)


def _macro_names_from_config_str(text: str) -> list[str]:
    """Macro names from ``gin.config_str()`` text: unindented ``NAME = ...`` lines whose name has no dot
    (parameters are ``[scope/]fn.param = ...``; continuation lines are indented)."""
    return _MACRO_LINE.findall(text)


# --------------------------------------------------------------------------------------------- files


@contextlib.contextmanager
def _search_paths(paths: list[str]) -> Iterator[None]:
    """gin's search paths (``gin.config._LOCATION_PREFIXES``) are ``[*paths, '']`` inside the block."""
    prefixes = getattr(gin.config, "_LOCATION_PREFIXES", None)
    if not isinstance(prefixes, list):  # no internal list: extend gin's through the public API
        for p in paths:
            gin.add_config_file_search_path(p)
        yield
        return
    saved = list(prefixes)
    prefixes[:] = [*paths, ""]
    try:
        yield
    finally:
        prefixes[:] = saved


def _resolve_file(name: str, paths: list[str]) -> str:
    """A top-level gin file as given (absolute, or relative to the working directory), else in a search
    path; an absolute path for gin. Remote paths (``gs://...``) go to gin's file readers unchanged."""
    if "://" in name:
        return name
    expanded = os.path.expanduser(name)
    candidates = [expanded]
    if not os.path.isabs(expanded):
        candidates += [os.path.join(p, expanded) for p in paths]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise ConfigError(file_not_found(name, paths, absolute=os.path.isabs(expanded)))


@contextlib.contextmanager
def _quiet_gin_path_probing() -> Iterator[None]:
    """gin's package-resource reader logs ``Path not found: ...`` at ERROR on the root logger for every
    search-path prefix that lacks an included file; drop those records while parsing."""

    def keep(record: logging.LogRecord) -> bool:
        return not (record.module == "resource_reader" and f"{os.sep}gin{os.sep}" in record.pathname)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
