"""What goes wrong on a gin command line, as one line: :class:`ConfigError`, the checks gin itself does not
make (a binding to an undefined macro, a ``%MACRO`` nothing defines), and gin's own multi-line exceptions
reduced to their first line plus the place and a hint (what exists, what was probably meant)."""

from __future__ import annotations

import difflib
import inspect
import os
import re
import tokenize
from collections.abc import Iterable
from typing import Any

import gin
from gin import config_parser

MACRO_SELECTOR = "gin.macro"  # the configurable gin binds macros to (``X = 1`` -> ``X/gin.macro.value``)
_MAX_LISTED = 12  # how many names a message lists before "… (N more)"


class ConfigError(ValueError):
    """A bad command line or gin config: one line naming what is wrong and what exists (the CLI prints it
    and exits 2)."""


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


def check_binding(binding: str, file_macros: set[str]) -> None:
    """Syntax, macro targets and ``%macro`` uses of one ``--gin_bindings`` / ``--gin.`` entry: a binding may
    only set a macro the files define (gin alone would create it silently)."""
    delegate = _RecordingDelegate()
    try:
        statements = list(config_parser.ConfigParser(binding, delegate))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(binding_error(binding, e)) from e
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


def check_macro_references(macros: set[str]) -> None:
    """Every ``%X`` in the parsed config names one of ``macros`` (or a gin constant): gin would otherwise
    accept it and fail only when the configurable is called."""
    config = getattr(gin.config, "_CONFIG", None)
    iterate = getattr(gin.config, "iterate_references", None)
    if not isinstance(config, dict) or iterate is None:
        return
    for (scope, selector), params in list(config.items()):
        for param, value in params.items():
            for ref in iterate(value):
                key = getattr(ref, "config_key", None)
                if not (isinstance(key, tuple) and len(key) == 2 and key[1] == MACRO_SELECTOR):
                    continue
                if _macro_defined(key[0], macros):
                    continue
                if selector == MACRO_SELECTOR:
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

_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""", re.MULTILINE)


def top_level_files(directory: str | os.PathLike, root: str | os.PathLike | None = None) -> list[str]:
    """The ``*.gin`` files of ``directory`` that no gin file under ``directory`` includes (include paths are
    relative to ``root``, by default ``directory``), sorted: ``base.gin``, shared by the task files, is no
    experiment of its own, and in ``gin/tasks`` (root ``gin``) the family file ``arithmetic.gin`` is no dataset."""
    directory = os.fspath(directory)
    root = directory if root is None else os.fspath(root)
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    files = sorted(f for f in entries if f.endswith(".gin") and os.path.isfile(os.path.join(directory, f)))
    included: set[str] = set()
    for here, _, names in os.walk(directory):
        for name in names:
            if name.endswith(".gin"):
                try:
                    with open(os.path.join(here, name), encoding="utf-8") as f:
                        included.update(os.path.normpath(m) for m in _INCLUDE.findall(f.read()))
                except (OSError, UnicodeDecodeError):
                    pass
    prefix = os.path.relpath(directory, root)
    return [f for f in files if os.path.normpath(os.path.join(prefix, f)) not in included]


def file_not_found(name: str, paths: list[str], absolute: bool = False) -> str:
    """A top-level gin file that is nowhere: where it was searched (unless ``absolute``) and what exists."""
    where = "" if absolute else f"; searched: {_searched(paths)}"
    listing = top_level_files(paths[0]) if paths else []
    there = f"; gin files in {display(paths[0])}: {listed(listing)}" if listing else ""
    return f"gin file not found: {name}{where}{there}"


def no_file_message(paths: list[str]) -> str:
    """No ``--gin_file`` at all: an example and the files there are."""
    if not paths:
        return "no --gin_file given; e.g. --gin_file=gin/mawps_rigl.gin"
    listing = top_level_files(paths[0])
    if not listing:
        return f"no --gin_file given (and no gin files in {display(paths[0])})"
    first = os.path.join(display(paths[0]), listing[0])
    return f"no --gin_file given; e.g. --gin_file={first} (files: {listed(listing)})"


def display(path: str) -> str:
    """A path relative to the working directory when it is below it, else absolute."""
    if not path:
        return "."
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else os.path.abspath(path)


def _searched(paths: list[str]) -> str:
    return ", ".join(["the working directory", *map(display, paths)])


# --------------------------------------------------------------------------------------------- messages

_OPEN_FAILED = re.compile(r"Unable to open file: (.*?)\. Searched config paths: ")
_IN_FILE = re.compile(r'In file "(.*?)", line (\d+)')
_NO_CONFIGURABLE = re.compile(r"No configurable matching (?:reference )?'@?([^'()]+)(?:\(\))?'")
_NO_PARAMETER = re.compile(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'")
_BAD_TOKEN = re.compile(r"Failed to parse token '([^']*)'")


def file_error(e: BaseException, path: str, paths: list[str]) -> str:
    """gin's failure to parse the file ``path`` (or a file it includes) as one line."""
    text = str(e)
    opened = _OPEN_FAILED.search(text)
    if opened:
        where = _IN_FILE.search(text)
        by = f" (included from {display(where.group(1))} line {where.group(2)})" if where else ""
        searched = ", ".join([*map(display, paths), "the working directory"])
        return f"gin file not found: {opened.group(1)}{by}; searched: {searched}"
    return f"{_reason(e)}{_hint(e)} ({_location(e, default_file=path)})"


def binding_error(binding: str, e: BaseException) -> str:
    """gin's failure to parse one command-line binding as one line."""
    return f"bad gin binding {_one_line(binding)!r}: {_reason(e)}{_hint(e)}"


def _reason(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        msg = e.msg or "syntax error"
        token = _BAD_TOKEN.search(msg)
        if token:
            return f"cannot parse value {token.group(1)!r} (strings need quotes, e.g. \"'{token.group(1)}'\")"
        return f"syntax error: {first_line(msg).rstrip('.')}"
    if isinstance(e, tokenize.TokenError):
        return "unexpected end of input (an unclosed bracket or string?)"
    if isinstance(e, ImportError):
        return f"cannot import {e.name}" if e.name else first_line(e)
    return first_line(e).rstrip(".")


def _location(e: BaseException, default_file: str) -> str:
    if isinstance(e, SyntaxError):
        return f"in {display(e.filename or default_file)} line {e.lineno}"
    where = _IN_FILE.search(str(e))
    if where:
        return f"in {display(where.group(1))} line {where.group(2)}"
    return f"in {display(default_file)}"


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
        return f"; {param.group(1)} has parameters: {listed(params)}" if params else ""
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
    return f"this config defines: {listed(sorted(macros), limit=None)}"


def _binding_origin(binding: str, name: str) -> str:
    lines = [line.strip() for line in binding.splitlines() if line.strip()]
    if len(lines) == 1 and "=" in lines[0]:
        target, _, value = lines[0].partition("=")
        return f"--gin.{target.strip()}={value.strip()}"
    return f"binding {_one_line(binding)!r}"


def listed(names: Iterable[str], limit: int | None = _MAX_LISTED) -> str:
    """``a, b, c``; past ``limit`` names, ``a, b, … (N more)``."""
    names = list(names)
    if limit is None or len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", … ({len(names) - limit} more)"


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def first_line(e: BaseException | str) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__

