"""The T5X-style gin command line of ``scripts/train.py``: flags, parsing, macros, one-line errors.

Command line (T5X conventions)::

    scripts/train.py --gin_file=gin/mawps_rigl.gin --gin.SPARSITY=0.9 --gin.DATA_DIR="'../shared/data/x'"

- ``--gin_file=F`` / ``--gin_file F`` (repeatable): top-level gin files, found as given (relative to the
  working directory) or in a search path (the repo's ``gin/``); ``include`` statements inside them are
  resolved against the search paths first, then the working directory.
- ``--gin_bindings=B`` / ``--gin_bindings B`` (repeatable; one flag may hold several newline-separated
  bindings, kept together as one entry and parsed as a unit).
- ``--gin.NAME=VALUE`` is the binding ``NAME=VALUE``; ``NAME`` is a macro (``SPARSITY``), a parameter
  (``train.log_every``) or a scoped parameter (``scope/fn.param``). ``VALUE`` is gin syntax, so strings
  need quotes: ``--gin.DATA_DIR="'path'"``; ``None``, ``0.5``, ``'all'``, ``%OTHER_MACRO`` all work.

Files are parsed first, then the bindings in the order given (later wins). A binding to a macro that the
*files* do not define is an error (gin alone would silently create the macro); so is a ``%MACRO`` that
nothing defines. Every failure is a :class:`ConfigError` with a one-line message; gin's own exceptions
(multi-line, with location footers) are reduced to their first line plus the place and a hint.

How macros are detected (gin-config 0.5): a statement ``X = 1`` is stored by ``gin.parse_config`` as the
binding ``X/gin.macro.value = 1``, i.e. under the key ``('X', 'gin.macro')`` of ``gin.config._CONFIG``
(the dict of ``(scope, complete selector) -> {param: value}``), so the macro names are the scopes of the
keys whose selector is ``gin.macro``. Values are read back through the public
``gin.query_parameter('X/gin.macro.value')``. Should a future gin drop ``_CONFIG``, the names fall back to
the ``NAME = value`` lines (no dot in the name) of the public ``gin.config_str()``.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import os
import re
import tokenize
from collections.abc import Iterator, Sequence
from typing import Any

import gin
from gin import config_parser

__all__ = [
    "ConfigError",
    "config_str",
    "defined_macros",
    "finalize",
    "macro_value",
    "operative_config",
    "parse_command_line",
    "parse_config",
    "split_gin_args",
]

_MACRO_SELECTOR = "gin.macro"  # the configurable gin binds macros to (``X = 1`` -> ``X/gin.macro.value``)
_CONSTANT_SELECTOR = "gin.constant"  # ``%gin.REQUIRED`` and other ``gin.constant``s
_MAX_LISTED = 12  # how many names a message lists before "… (N more)"


class ConfigError(ValueError):
    """A bad command line or gin config: one line naming what is wrong and what exists (the CLI prints it
    and exits 2)."""


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
        dest = None
        for flag, target in (("--gin_file", files), ("--gin_bindings", bindings)):
            if arg == flag:
                if i + 1 >= len(args) or args[i + 1].startswith("--") or not args[i + 1].strip():
                    raise ConfigError(f"{flag} needs a value, e.g. {flag}={_FLAG_EXAMPLES[flag]}")
                target.append(args[i + 1])
                i += 2
                dest = target
                break
            if arg.startswith(flag + "="):
                value = arg[len(flag) + 1 :]
                if not value.strip():
                    raise ConfigError(f"{arg} has an empty value, e.g. {flag}={_FLAG_EXAMPLES[flag]}")
                target.append(value)
                i += 1
                dest = target
                break
        if dest is not None:
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
            i += 1
            continue
        rest.append(arg)
        i += 1
    return files, bindings, rest


_FLAG_EXAMPLES = {"--gin_file": "gin/mawps_rigl.gin", "--gin_bindings": "'SPARSITY = 0.9'"}


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
            raise ConfigError(_no_file_message(paths))
        resolved = [_resolve_file(f, paths) for f in gin_files]
        with _quiet_gin_path_probing():
            for path in resolved:
                try:
                    gin.parse_config_file(path)
                except Exception as e:  # noqa: BLE001 - every gin failure becomes one line
                    raise ConfigError(_file_error(e, path, paths)) from e
            file_macros = set(_macro_names())
            for binding in bindings:
                _check_binding(binding, file_macros)
                try:
                    gin.parse_config(binding)
                except Exception as e:  # noqa: BLE001
                    raise ConfigError(_binding_error(binding, e)) from e
        _check_macro_references()
    except ConfigError:
        gin.clear_config()
        raise


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
        raise ConfigError(f"gin finalize failed: {_first_line(e)}") from e


# --------------------------------------------------------------------------------------------- macros


def defined_macros() -> dict[str, object]:
    """The macros of the currently parsed config and their values (after bindings), sorted by name. A
    macro defined as another macro (``A = %B``) gives B's value; ``%gin.REQUIRED`` gives ``gin.REQUIRED``."""
    return {name: macro_value(name) for name in sorted(_macro_names())}


def macro_value(name: str, default: Any = None) -> Any:
    """The current value of macro ``name``, or ``default`` if the config does not define it."""
    value = _query_macro(name)
    if value is _MISSING:
        return default
    for _ in range(100):  # follow ``A = %B`` chains (a cycle stops here rather than looping)
        key = getattr(value, "config_key", None)
        if not (isinstance(key, tuple) and len(key) == 2):
            break
        scope, selector = key
        if selector == _MACRO_SELECTOR:
            nxt = _query_macro(scope)
            if nxt is _MISSING:
                break
            value = nxt
        elif selector == _CONSTANT_SELECTOR:
            try:
                value = gin.query_parameter(scope)
            except ValueError:
                break
        else:
            break  # ``@fn()`` and the like stay references
    return value


def operative_config() -> str:
    """``gin.operative_config_str()``: the bindings *used so far* (only called configurables appear)."""
    return gin.operative_config_str()


def config_str() -> str:
    """``gin.config_str()``: the full parsed config (files + bindings), e.g. for ``WORKDIR/config.gin``."""
    return gin.config_str()


_MISSING = object()


def _query_macro(name: str) -> Any:
    try:
        return gin.query_parameter(f"{name}/{_MACRO_SELECTOR}.value")
    except ValueError:
        return _MISSING


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
    return [k[0] for k in config if isinstance(k, tuple) and len(k) == 2 and k[1] == _MACRO_SELECTOR]


_MACRO_LINE = re.compile(r"^([A-Za-z_]\w*(?:/[A-Za-z_]\w*)*)\s*=", re.MULTILINE)


def _macro_names_from_config_str(text: str) -> list[str]:
    """Macro names from ``gin.config_str()`` text: unindented ``NAME = ...`` lines whose name has no dot
    (parameters are ``[scope/]fn.param = ...``; continuation lines are indented)."""
    return _MACRO_LINE.findall(text)


# --------------------------------------------------------------------------------------------- checks


class _RecordingDelegate(config_parser.ParserDelegate):
    """Parses a binding with gin's own parser, without touching gin's registry or config: records the
    ``%macros`` it uses and returns placeholders for references."""

    def __init__(self) -> None:
        self.macros: list[str] = []

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return None

    def macro(self, macro_name):
        self.macros.append(macro_name)
        return None


def _check_binding(binding: str, file_macros: set[str]) -> None:
    """Syntax, macro targets and ``%macro`` uses of one ``--gin_bindings`` / ``--gin.`` entry."""
    delegate = _RecordingDelegate()
    try:
        statements = list(config_parser.ConfigParser(binding, delegate))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(_binding_error(binding, e)) from e
    for statement in statements:
        if isinstance(statement, config_parser.BindingStatement) and not statement.arg_name:
            name = f"{statement.scope}/{statement.selector}" if statement.scope else statement.selector
            if name not in file_macros:
                raise ConfigError(
                    f"unknown macro {name} (from {_binding_origin(binding, name)}); "
                    f"{_suggest(name, file_macros)}{_defines(file_macros)}"
                )
    for name in delegate.macros:
        if not _macro_defined(name, file_macros):
            raise ConfigError(
                f"unknown macro %{name} used by binding {_one_line(binding)!r}; "
                f"{_suggest(name, file_macros)}{_defines(file_macros)}"
            )


def _check_macro_references() -> None:
    """Every ``%X`` in the parsed config names a defined macro (or a gin constant): gin would otherwise
    accept it and fail only when the configurable is called."""
    config = getattr(gin.config, "_CONFIG", None)
    iterate = getattr(gin.config, "iterate_references", None)
    if not isinstance(config, dict) or iterate is None:
        return
    macros = set(_macro_names())
    for (scope, selector), params in list(config.items()):
        for param, value in params.items():
            for ref in iterate(value):
                key = getattr(ref, "config_key", None)
                if not (isinstance(key, tuple) and len(key) == 2 and key[1] == _MACRO_SELECTOR):
                    continue
                if _macro_defined(key[0], macros):
                    continue
                if selector == _MACRO_SELECTOR:
                    user = f"macro {scope}"
                else:
                    user = f"{_short_selector(selector)}.{param}"
                    user = f"{scope}/{user}" if scope else user
                raise ConfigError(
                    f"macro %{key[0]} is used by {user} but never defined; "
                    f"{_suggest(key[0], macros)}{_defines(macros)}"
                )


def _macro_defined(name: str, macros: set[str]) -> bool:
    if name in macros or any(m.endswith("/" + name) for m in macros):
        return True
    try:  # a gin constant (``%gin.REQUIRED``, ``gin.constant('X', ...)``)
        gin.query_parameter(name)
        return True
    except Exception:  # noqa: BLE001
        return False


def _short_selector(selector: str) -> str:
    """``__main__.f`` -> ``f``: gin's minimal unambiguous selector, where available."""
    try:
        return gin.config._REGISTRY.minimal_selector(selector)
    except Exception:  # noqa: BLE001
        return selector


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
    where = "" if os.path.isabs(expanded) else f"; searched: {_searched(paths)}"
    listing = _gin_files(paths[0]) if paths else []
    there = f"; gin files in {_display(paths[0])}: {_listed(listing)}" if listing else ""
    raise ConfigError(f"gin file not found: {name}{where}{there}")


def _no_file_message(paths: list[str]) -> str:
    if not paths:
        return "no --gin_file given; e.g. --gin_file=gin/mawps_rigl.gin"
    listing = _gin_files(paths[0])
    if not listing:
        return f"no --gin_file given (and no gin files in {_display(paths[0])})"
    first = os.path.join(_display(paths[0]), listing[0])
    return f"no --gin_file given; e.g. --gin_file={first} (files: {_listed(listing)})"


_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""", re.MULTILINE)


def _gin_files(directory: str) -> list[str]:
    """The top-level ``*.gin`` files of ``directory`` that no gin file under it includes (``base.gin``,
    shared by the task files, is no experiment of its own)."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    files = sorted(f for f in entries if f.endswith(".gin") and os.path.isfile(os.path.join(directory, f)))
    included: set[str] = set()
    for root, _, names in os.walk(directory):
        for name in names:
            if name.endswith(".gin"):
                try:
                    with open(os.path.join(root, name), encoding="utf-8") as f:
                        included.update(os.path.normpath(m) for m in _INCLUDE.findall(f.read()))
                except (OSError, UnicodeDecodeError):
                    pass
    return [f for f in files if f not in included]


def _display(path: str) -> str:
    """A path relative to the working directory when it is below it, else absolute."""
    if not path:
        return "."
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else os.path.abspath(path)


def _searched(paths: list[str]) -> str:
    return ", ".join(["the working directory", *map(_display, paths)])


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


# --------------------------------------------------------------------------------------------- messages

_OPEN_FAILED = re.compile(r"Unable to open file: (.*?)\. Searched config paths: ")
_IN_FILE = re.compile(r'In file "(.*?)", line (\d+)')
_IN_BINDINGS = re.compile(r"In bindings string line (\d+)")
_NO_CONFIGURABLE = re.compile(r"No configurable matching (?:reference )?'@?([^'()]+)(?:\(\))?'")
_NO_PARAMETER = re.compile(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'")
_BAD_TOKEN = re.compile(r"Failed to parse token '([^']*)'")


def _file_error(e: BaseException, path: str, paths: list[str]) -> str:
    text = str(e)
    opened = _OPEN_FAILED.search(text)
    if opened:
        where = _IN_FILE.search(text)
        by = f" (included from {_display(where.group(1))} line {where.group(2)})" if where else ""
        searched = ", ".join([*map(_display, paths), "the working directory"])
        return f"gin file not found: {opened.group(1)}{by}; searched: {searched}"
    return f"{_reason(e)}{_hint(e)} ({_location(e, default_file=path)})"


def _binding_error(binding: str, e: BaseException) -> str:
    return f"bad gin binding {_one_line(binding)!r}: {_reason(e)}{_hint(e)}"


def _reason(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        msg = e.msg or "syntax error"
        token = _BAD_TOKEN.search(msg)
        if token:
            return f"cannot parse value {token.group(1)!r} (strings need quotes, e.g. \"'{token.group(1)}'\")"
        return f"syntax error: {_first_line(msg).rstrip('.')}"
    if isinstance(e, tokenize.TokenError):
        return "unexpected end of input (an unclosed bracket or string?)"
    if isinstance(e, ImportError):
        return f"cannot import {e.name}" if e.name else _first_line(e)
    return _first_line(e).rstrip(".")


def _location(e: BaseException, default_file: str) -> str:
    if isinstance(e, SyntaxError):
        return f"in {_display(e.filename or default_file)} line {e.lineno}"
    text = str(e)
    where = _IN_FILE.search(text)
    if where:
        return f"in {_display(where.group(1))} line {where.group(2)}"
    return f"in {_display(default_file)}"


def _hint(e: BaseException) -> str:
    """What exists: a configurable's parameters, or registered configurables with a similar name."""
    text = str(e)
    registry = getattr(gin.config, "_REGISTRY", None)
    if registry is None:
        return ""
    param = _NO_PARAMETER.search(text)
    if param:
        try:
            params = _parameters(registry.get_match(param.group(1)).wrapped)
        except Exception:  # noqa: BLE001
            return ""
        return f"; {param.group(1)} has parameters: {_listed(params)}" if params else ""
    missing = _NO_CONFIGURABLE.search(text)
    if missing:
        try:
            names = {sel.rsplit(".", 1)[-1] for sel, _ in registry.items()}
        except Exception:  # noqa: BLE001
            return ""
        close = difflib.get_close_matches(missing.group(1), sorted(names), n=3, cutoff=0.6)
        return f"; did you mean {' or '.join(close)}?" if close else ""
    return ""


def _parameters(fn_or_cls: Any) -> list[str]:
    fn = fn_or_cls.__init__ if inspect.isclass(fn_or_cls) else fn_or_cls
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]
    return [n for n in names if n not in ("self", "cls")]


def _suggest(name: str, macros: set[str]) -> str:
    by_upper = {m.upper(): m for m in macros}
    close = difflib.get_close_matches(name.upper(), sorted(by_upper), n=1, cutoff=0.75)
    return f"did you mean {by_upper[close[0]]}? " if close else ""


def _defines(macros: set[str]) -> str:
    if not macros:
        return "this config defines no macros"
    return f"this config defines: {_listed(sorted(macros), limit=None)}"


def _binding_origin(binding: str, name: str) -> str:
    lines = [line.strip() for line in binding.splitlines() if line.strip()]
    if len(lines) == 1 and "=" in lines[0]:
        target, _, value = lines[0].partition("=")
        return f"--gin.{target.strip()}={value.strip()}"
    return f"binding {_one_line(binding)!r}"


def _listed(names: Sequence[str], limit: int | None = _MAX_LISTED) -> str:
    names = list(names)
    if limit is None or len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", … ({len(names) - limit} more)"


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _first_line(e: BaseException | str) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__
