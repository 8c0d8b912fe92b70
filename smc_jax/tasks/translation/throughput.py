"""Input-pipeline figures of the translation family: tokenising FLORES-200 + Tatoeba into the token cache twice (the
second pass only reads), and the target tokens per second that batch assembly from the cache sustains on one core.

    python -m smc_jax.tasks.translation.throughput --pretrained DIR --flores ../shared/data/flores200 \
        --tatoeba ../shared/data/tatoeba_laser --cache /tmp/tr_cache [--seconds 10]

Prints one JSON object. Run it on an idle machine (timings under load say nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from smc_jax.tasks.translation import data


def cache_passes(pretrained: str, flores: Path, tatoeba: Path, cache: Path) -> dict[str, Any]:
    """Tokenise every FLORES-200 (dev, devtest) and Tatoeba bitext of the ten languages into ``cache`` twice."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    key = data.tokenizer_hash(pretrained)

    def encode(lines: list[str]) -> list[list[int]]:
        return tokenizer(lines, add_special_tokens=False)["input_ids"]

    out = {}
    for name in ("first", "second"):
        store = data.TokenCache(cache, key)
        started, tokens = time.perf_counter(), 0
        for lang in data.LANGS:
            jobs = [("flores200", flores, s) for s in data.SPLITS["flores200"]]
            if lang in data.TATOEBA_CODES:
                jobs.append(("tatoeba", tatoeba, "test"))
            for source, folder, split in jobs:
                b = data.load_bitext(source, folder, lang, split, store, encode, None, "--flores/--tatoeba",
                                     keep_text=False)
                tokens += int(b.en.offsets[-1] + b.x.offsets[-1])
        out[name] = {"seconds": time.perf_counter() - started, "tokens": tokens, "hits": store.hits,
                     "misses": store.misses}
    return out


def assembly_rate(task: Any, seconds: float = 10.0, seed: int = 0) -> dict[str, float]:
    """Target tokens (non-pad labels) per second that ``task.make_update`` assembles, planning included."""
    stream = task.train_stream(seed)
    next(stream)  # the first epoch's plan is part of the stream; count it too below
    started, tokens, updates = time.perf_counter(), 0, 0
    while time.perf_counter() - started < seconds:
        batch = next(stream)
        tokens += int(np.sum(batch["labels"] != 1))
        updates += 1
    elapsed = time.perf_counter() - started
    return {"target_tokens_per_s": tokens / elapsed, "updates_per_s": updates / elapsed, "seconds": elapsed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", required=True, help="an mBART checkpoint directory with its tokenizer")
    parser.add_argument("--flores", type=Path, required=True)
    parser.add_argument("--tatoeba", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=None, help="token cache (default: a fresh temporary folder)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from smc_jax.tasks.translation import TranslationTask

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        result: dict[str, Any] = {"cache": cache_passes(args.pretrained, args.flores, args.tatoeba, cache)}
        task = TranslationTask(setting="10to10", source="flores200", data_dir=str(args.flores),
                               pretrained=args.pretrained, cache_dir=str(cache), eval_directions=("en-fr",),
                               max_eval_examples=1, truncate_eval=True)
        result["assembly"] = assembly_rate(task, args.seconds)
        result["max_tokens"], result["grad_accum_steps"] = task.max_tokens, task.grad_accum_steps
    print(json.dumps(result))


if __name__ == "__main__":
    main()
