"""Rebuild the packaged arithmetic data archive (``smc_jax/tasks/arithmetic/svamp_data.tar.xz``).

    python scripts/pack_arithmetic_data.py [SOURCE] [--check]

SOURCE is a folder laid out like ``../shared/data/arithmetic`` (the default). Only the 22 CSVs listed in
``smc_jax.tasks.arithmetic.data.SHA256`` are packed, each checked against its sha256 first. The archive is
deterministic: ustar members in sorted order, mtime 0, uid/gid 0, no owner names, mode 0644, xz preset 9e;
rebuilding from the same files gives the same bytes. ``--check`` compares the shipped archive with a rebuild
instead of writing it (exit status 1 when they differ).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import sys
import tarfile
from pathlib import Path

from smc_jax.tasks.arithmetic.data import PACKAGED_ARCHIVE, SHA256

DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arithmetic"


def build_archive(source: Path) -> bytes:
    """The archive's bytes, built from ``source``; a ValueError names any missing or mismatched file."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz", format=tarfile.USTAR_FORMAT,
                      preset=9 | lzma.PRESET_EXTREME) as tar:
        for relative in sorted(SHA256):
            path = source / relative
            if not path.is_file():
                raise ValueError(f"{source} lacks {relative}")
            payload = path.read_bytes()
            if hashlib.sha256(payload).hexdigest() != SHA256[relative]:
                raise ValueError(f"{path} does not match its sha256 in smc_jax.tasks.arithmetic.data.SHA256")
            info = tarfile.TarInfo(relative)
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--check", action="store_true", help="verify the shipped archive equals a rebuild")
    args = parser.parse_args(argv)
    archive = build_archive(args.source)
    if args.check:
        same = PACKAGED_ARCHIVE.is_file() and PACKAGED_ARCHIVE.read_bytes() == archive
        print(f"{PACKAGED_ARCHIVE}: {'matches' if same else 'DIFFERS FROM'} a rebuild from {args.source}")
        return 0 if same else 1
    PACKAGED_ARCHIVE.write_bytes(archive)
    print(f"wrote {PACKAGED_ARCHIVE} ({len(archive)} bytes, sha256 {hashlib.sha256(archive).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
