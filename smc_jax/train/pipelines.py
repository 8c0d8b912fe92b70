"""Experiments as DESIGN.md names them, built from :func:`smc_jax.train.trainer.fit`.

- Before / During algorithms (``dense``, ``omp_before``, ``random_before``, ``snip``, ``gmp``, ``rigl``,
  ``snip_rigl``, ``omp_rigl``): initial params → masks → one run.
- ``omp_after`` / ``random_after``: the dense run at ``dense_workdir`` (trained there first when it has no
  ``summary.json``, never twice), its best-epoch params pruned, then a full fresh run from them.
- ``lth``: round 0 is that dense run; round k prunes 20% of the survivors of round k−1's best-epoch
  params, rewinds the survivors to *this fold's own* initial weights (the original rewinds every fold to
  fold 4's decoder, SPEC Q-A7) and trains; ``round_k/summary.json`` each, the last copied to the top.
- ``fold='all'``: every fold as ``fold_k/`` plus ``cv_summary.json`` (micro-average over ``num_eval``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from smc_jax import sparsity as sp
from smc_jax.tasks.base import Task
from smc_jax.train.checkpoints import RunCheckpoints
from smc_jax.train.optim import Optimizer
from smc_jax.train.partitioning import Partitioner, Partitioning
from smc_jax.train.records import write_json
from smc_jax.train.steps import place
from smc_jax.train.trainer import Diverged, MaskRules, TrainConfig, fit

PAPER_SPARSITIES = (0.2, 0.36, 0.488, 0.59, 0.672, 0.738, 0.791, 0.8325, 0.866, 0.893)


def sparsity_label(sparsity: float) -> float:
    """The paper's grid value within 0.001 of ``sparsity`` (LTH round 7: 0.7903 → 0.791), else rounded."""
    near = min(PAPER_SPARSITIES, key=lambda s: abs(s - sparsity))
    return near if abs(near - sparsity) <= 1e-3 else round(float(sparsity), 4)


@dataclasses.dataclass
class Experiment:
    """One experiment (gin: ``Experiment.*``): a task factory, an algorithm, an optimizer and where to write.

    ``task`` is called as ``task(fold=k)`` (a class of ``smc_jax.tasks.TASKS``); ``optimizer`` is the
    :class:`smc_jax.train.optim.Optimizer` the task family's gin file states; a run lasts ``num_epochs``
    epochs, or exactly ``train_steps`` updates when that is set (step-based recipes); ``workdir`` ``None`` names
    ``runs/<task>[_<model>]_<algorithm>_s<sparsity>_seed<seed>[_fold<k>]``; ``dense_workdir`` ``None`` names a sibling
    from the task, model, pretrained, seed, fold and a hash of the dense run's settings.
    """

    task: Callable[..., Task]
    algorithm: sp.Algorithm
    optimizer: Optimizer | None = None
    seed: int = 6174
    num_epochs: int = 50
    train_steps: int | None = None
    workdir: str | None = None
    dense_workdir: str | None = None
    fold: int | str | None = 0
    mask_rules: MaskRules = MaskRules()
    train: TrainConfig = TrainConfig()
    partitioning: Partitioning = Partitioning()

    def __post_init__(self):
        if not isinstance(self.algorithm, sp.Algorithm):
            raise ValueError(f"Experiment.algorithm must be an algorithm (e.g. @RigL()), got {self.algorithm!r}")
        if getattr(self.algorithm, "tie_seed", 0) is None:  # the random tie order follows the run's seed
            self.algorithm = dataclasses.replace(self.algorithm, tie_seed=int(self.seed))
        if not isinstance(self.optimizer, Optimizer):
            raise ValueError(f"Experiment.optimizer must be an optimizer (e.g. @Optimizer() in the task family's gin "
                             f"file), got {self.optimizer!r}")
        if int(self.num_epochs) < 1:
            raise ValueError(f"NUM_EPOCHS must be >= 1, got {self.num_epochs}")
        if self.train_steps is not None and int(self.train_steps) < 1:
            raise ValueError(f"TRAIN_STEPS must be >= 1, got {self.train_steps}")


def _keys(seed: int) -> dict[str, jax.Array]:
    base = jax.random.key(int(seed))
    return {"init": jax.random.fold_in(base, 0), "masks": jax.random.fold_in(base, 1),
            "snip": jax.random.fold_in(base, 3)}


def model_tag(model: str | None, default: str | None) -> str:
    """``'_<model>'`` where a task family offers several models and ``model`` is not its ``default``, else ``''``:
    runs of the default model keep the names they had before the family had a choice."""
    return f"_{model}" if model and default and model != default else ""


def default_workdir(task: Task, algorithm: sp.Algorithm, seed: int, fold: int | str | None = None) -> Path:
    """``runs/<task>[_<model>]_<algorithm>[_s<sparsity>]_seed<seed>[_fold<k>]`` (``fold`` overrides the task's;
    ``_<model>`` for a model other than the family's ``default_model``, e.g. ``mawps_graph2tree_rigl_...``)."""
    sparse = "" if isinstance(algorithm, sp.Dense) else f"_s{getattr(algorithm, 'sparsity', 0.0):g}"
    fold = task.fold if fold is None else fold
    fold = "" if fold is None else f"_fold{fold}"
    model = model_tag(task.model_name, getattr(task, "default_model", None))
    return Path("runs") / f"{task.name}{model}_{algorithm.name}{sparse}_seed{seed}{fold}"


def default_dense_workdir(task: Task, workdir: Path, seed: int, num_epochs: int, train_steps: int | None = None,
                          optimizer: Optimizer | None = None) -> Path:
    """A sibling of ``workdir`` named from the task, model, pretrained, seed, fold and a hash of the settings that
    decide the dense run (the task's ``config()``, which names a model other than its family's default, the run
    length, the optimizer)."""
    length = {"num_epochs": int(num_epochs)} if train_steps is None else {"train_steps": int(train_steps)}
    optim = {} if optimizer is None else {"optimizer": optimizer.config()}
    settings = json.dumps({"task": task.config(), **length, **optim}, sort_keys=True, default=str)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:8]
    fold = "" if task.fold is None else f"_fold{task.fold}"
    pretrained = task.pretrained.replace("/", "-") if task.pretrained else "learned"
    return workdir.parent / f"dense_{task.name}_{task.model_name}_{pretrained}_seed{seed}{fold}_{digest}"


def _read_summary(workdir: Path) -> dict | None:
    path = workdir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


class _Layout:
    """The run's mesh: params laid out by the task's logical axes, mask trees like their params, so mask
    initialisation (global thresholds, SNIP scores, LTH pruning and rewinding) runs sharded."""

    def __init__(self, exp: Experiment, task: Task):
        self.partitioner, self.task = Partitioner(exp.partitioning), task

    def params(self, params: Any) -> Any:
        return place(self.partitioner, self.task, params)[0]

    def masks(self, masks: Any, params: Any) -> Any:
        return place(self.partitioner, self.task, params, masks)[1]

    def batch(self, batch: Any) -> Any:
        return self.partitioner.put_batch(batch)


def _best(workdir: Path, params: Any, masks: Any) -> tuple[Any, Any]:
    """The best-epoch params and masks of a finished run."""
    restored = RunCheckpoints(workdir / "checkpoints").restore_best({"params": params, "masks": masks})
    if restored is None:
        raise ValueError(f"{workdir} has a summary.json but no best checkpoint; delete the folder to retrain it")
    tree, _ = restored
    return tree["params"], tree["masks"]


def _log(task: Task, text: str) -> None:
    print(f"[{task.name}{'' if task.fold is None else f' fold {task.fold}'}] {text}", flush=True)


def ensure_dense(exp: Experiment, task: Task, dense_workdir: Path) -> tuple[Any, Any, dict]:
    """The dense run's initial params, best-epoch params and summary (laid out on the mesh); trains it first
    if needed."""
    keys, layout = _keys(exp.seed), _Layout(exp, task)
    initial = layout.params(task.init_params(keys["init"]))
    dense = sp.Dense()
    masks = layout.masks(exp.mask_rules.masks(initial, dense.name), initial)
    summary = _read_summary(dense_workdir)
    if summary is None:
        _log(task, f"training the dense run first, in {dense_workdir}")
        summary = fit(task, dense, dense_workdir, seed=exp.seed, num_epochs=exp.num_epochs, params=initial,
                      masks=masks, optimizer=exp.optimizer, config=exp.train, report={"sparsity_label": 0.0},
                      train_steps=exp.train_steps, partitioning=exp.partitioning)
    else:
        _check_not_diverged(summary, dense_workdir)
        _log(task, f"reusing the dense run in {dense_workdir} (reported {summary['reported']:.2f})")
    try:
        best, _ = _best(dense_workdir, initial, masks)
    except ValueError as err:  # a dense run of other settings (e.g. a head with another num_classes)
        if "belongs to another model/config" not in str(err):
            raise
        raise ValueError(f"DENSE_WORKDIR {dense_workdir} is a dense run of other settings ({err}); point "
                         "DENSE_WORKDIR at a dense run of this task and model (same num_classes / head) or unset "
                         "it") from None
    return initial, best, summary


def _check_not_diverged(summary: dict, workdir: Path) -> None:
    if summary.get("diverged"):
        raise Diverged(summary.get("diverged_step", -1), workdir, RunCheckpoints(workdir / "checkpoints").latest_step())


def run_single(exp: Experiment, task: Task, workdir: Path, dense_workdir: Path | None) -> dict:
    """One fold (or a single-split dataset): the pipeline of ``exp.algorithm``; returns its summary."""
    done = _read_summary(workdir)
    if done is not None:
        _check_not_diverged(done, workdir)
    if done is not None and not isinstance(exp.algorithm, sp.LTH):
        _log(task, f"{workdir} is complete (summary.json exists); nothing to do")
        return done
    algorithm, keys = exp.algorithm, _keys(exp.seed)
    if dense_workdir is None:
        dense_workdir = default_dense_workdir(task, workdir, exp.seed, exp.num_epochs, exp.train_steps, exp.optimizer)
    if isinstance(algorithm, sp.LTH):
        return _run_lth(exp, task, workdir, dense_workdir)
    label = {"sparsity_label": sparsity_label(getattr(algorithm, "sparsity", 0.0))}
    layout = _Layout(exp, task)
    if algorithm.phase == "after":
        _, start, _ = ensure_dense(exp, task, dense_workdir)
        label["dense_workdir"] = str(dense_workdir)
    else:
        start = layout.params(task.init_params(keys["init"]))
    prunable = layout.masks(exp.mask_rules.masks(start, algorithm.name), start)
    grads = None
    if algorithm.needs_grads:
        grads = jax.jit(jax.grad(task.loss))(start, layout.batch(task.snip_batch(exp.seed)), keys["snip"])
    masks = algorithm.init_masks(start, prunable, key=keys["masks"], grads=grads)
    return fit(task, algorithm, workdir, seed=exp.seed, num_epochs=exp.num_epochs,
               params=sp.apply_masks(start, masks), masks=masks, optimizer=exp.optimizer, config=exp.train,
               report=label, train_steps=exp.train_steps, partitioning=exp.partitioning)


def _run_lth(exp: Experiment, task: Task, workdir: Path, dense_workdir: Path) -> dict:
    algorithm: sp.LTH = exp.algorithm  # type: ignore[assignment]
    initial, trained, _ = ensure_dense(exp, task, dense_workdir)
    masks = _Layout(exp, task).masks(exp.mask_rules.masks(initial, algorithm.name), initial)
    summary = None
    for k in range(1, algorithm.num_rounds() + 1):
        round_dir = workdir / f"round_{k}"
        target = algorithm.round_sparsity(k)
        summary = _read_summary(round_dir)
        if summary is not None:
            _check_not_diverged(summary, round_dir)
        if summary is None:
            masks = algorithm.prune(trained, masks, k)
            _log(task, f"LTH round {k}/{algorithm.num_rounds()}: sparsity {target:.4f}, rewound to the initial weights")
            summary = fit(task, algorithm, round_dir, seed=exp.seed, num_epochs=exp.num_epochs,
                          params=algorithm.start_params(initial, trained, masks), masks=masks,
                          optimizer=exp.optimizer, config=exp.train,
                          target_sparsity=target, train_steps=exp.train_steps, partitioning=exp.partitioning,
                          report={"sparsity_label": sparsity_label(target), "round": k,
                                  "dense_workdir": str(dense_workdir)})
        trained, masks = _best(round_dir, initial, masks)
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "summary.json", summary)
    return summary


def cv_summary(folds: list[dict]) -> dict:
    """``summary.json`` keys with ``fold: 'all'``, ``reported`` and the ``selected``/``best``/``final`` metrics
    micro-averaged over ``num_eval`` (SPEC §1.2), integer counts (``value_correct``...) and ``num_eval``
    summed, ``train_steps_per_s`` = all steps over all training time, and the fold summaries under ``folds``."""
    n = sum(f["num_eval"] for f in folds)

    def average(key: str) -> dict:
        return {m: (sum(f[key][m] for f in folds) if isinstance(v, int)
                    else sum(f[key][m] * f["num_eval"] for f in folds) / n)
                for m, v in folds[0][key].items() if isinstance(v, (int, float))}

    rates = {}
    if all(f.get("train_steps_per_s") and f.get("steps") for f in folds):
        train_s = sum(f["steps"] / f["train_steps_per_s"] for f in folds)
        rates = {"train_steps_per_s": sum(f["steps"] for f in folds) / train_s}

    first = folds[0]
    per_leaf = {k: sum(f["per_leaf_sparsity"][k] for f in folds) / len(folds) for k in first["per_leaf_sparsity"]}
    return {**first, "fold": "all", "num_eval": n,
            "reported": sum(f["reported"] * f["num_eval"] for f in folds) / n,
            **{key: average(key) for key in ("selected", "best", "final") if first.get(key) is not None},
            "selected_step": None, "best_step": None,
            "actual_sparsity": sum(f["actual_sparsity"] for f in folds) / len(folds),
            "wall_time_s": sum(f["wall_time_s"] for f in folds), **rates, "per_leaf_sparsity": per_leaf,
            "folds": folds}


def run_experiment(exp: Experiment, config_text: str | None = None) -> dict:
    """Run ``exp`` (all folds when ``fold='all'``); returns the summary (or the CV summary).
    ``config_text`` (the gin config) is written to the top workdir as ``config.gin``."""
    if exp.fold == "all":
        probe = exp.task(fold=0)
        num_folds = type(probe).folds(probe.name)
        if num_folds is None:
            raise ValueError(f"FOLD='all' needs a cross-validated dataset; {probe.name} has a single split")
        top = Path(exp.workdir) if exp.workdir else default_workdir(probe, exp.algorithm, exp.seed, fold="all")
        if config_text is not None:
            copy_config(config_text, top)
        folds = []
        for k in range(num_folds):
            task = probe if k == 0 else exp.task(fold=k)
            dense = Path(exp.dense_workdir) / f"fold_{k}" if exp.dense_workdir else None
            folds.append(run_single(exp, task, top / f"fold_{k}", dense))
        summary = cv_summary(folds)
        write_json(top / "cv_summary.json", summary)
        _log(probe, f"cross-validated {summary['metric']}: {summary['reported']:.2f} "
                    f"over {summary['num_eval']} problems")
        return summary
    task = exp.task(fold=exp.fold)
    workdir = Path(exp.workdir) if exp.workdir else default_workdir(task, exp.algorithm, exp.seed)
    if config_text is not None:
        copy_config(config_text, workdir)
    return run_single(exp, task, workdir, Path(exp.dense_workdir) if exp.dense_workdir else None)


def copy_config(text: str, workdir: Path) -> None:
    """Write the operative gin config of a run to ``workdir/config.gin`` (process 0)."""
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.gin").write_text(text)

