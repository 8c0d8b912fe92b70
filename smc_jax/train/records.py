"""What a run writes besides checkpoints: progress on the terminal, ``metrics.jsonl`` events and JSON files.

``metrics.jsonl`` and ``summary.json`` are strict JSON: a non-finite number (a diverged loss, an undefined rate)
is written as ``null``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np


class Progress:
    """One updating line on a terminal, plain log lines elsewhere."""

    def __init__(self, mode: str, total: int, title: str):
        self.bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.quiet = mode == "off"
        self.total, self.title = total, title
        self.last = ""

    def update(self, step: int, fields: dict[str, str]) -> None:
        if self.quiet:
            return
        text = " ".join(f"{k} {v}" for k, v in fields.items())
        if self.bar:
            done = int(30 * step / max(self.total, 1))
            line = f"\r{self.title} [{'#' * done}{'.' * (30 - done)}] {step}/{self.total} {text}"
            sys.stderr.write(line.ljust(len(self.last)))
            sys.stderr.flush()
            self.last = line
        else:
            print(f"{self.title} step {step}/{self.total} {text}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar and self.last:
            sys.stderr.write("\n")
            self.last = ""
        print(f"{self.title} {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar and self.last and not self.quiet:
            sys.stderr.write("\n")
            sys.stderr.flush()


def strict(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers and non-finite floats as ``None`` (strict JSON)."""
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def trim_events(path: Path, step: int) -> None:
    """Drop the events a resumed run will write again (those after the restored step)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def append_event(path: Path, event: dict) -> None:
    """One strict-JSON line in ``metrics.jsonl`` (process 0 only)."""
    if jax.process_index() != 0:
        return
    with open(path, "a") as f:
        f.write(json.dumps(strict(event), allow_nan=False) + "\n")


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON atomically (a reader never sees half a file); in a multi-process run, process 0 only."""
    if jax.process_index() != 0:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(strict(obj), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
