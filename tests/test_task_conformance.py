"""Every registered task family through the Task protocol: init, two train steps, one evaluation, the metric
contract; and every ``task`` parameter of the engine and the CLI is annotated ``Task``."""

import importlib
import inspect
import pkgutil

import jax
import numpy as np
import pytest

import smc_jax.cli
import smc_jax.train
from smc_jax import sparsity as sp
from smc_jax.tasks import TASKS
from smc_jax.tasks.base import METRIC_MODES, SELECTIONS, BatchStream, Task
from smc_jax.train.optim import Optimizer
from smc_jax.train.trainer import MaskRules, TrainConfig, fit


def arithmetic(shared_data, tiny_roberta):
    # the sizes of test_train_cli's small runs, so the compiled programs come from the session's cache
    return TASKS["arithmetic"](data_dir=str(shared_data / "arithmetic"), max_train_examples=8, max_eval_examples=32,
                               hidden=32, embedding_size=32, batch_size=4, input_buckets=(96,), target_buckets=(16,))


def commonsense(shared_data, tiny_roberta):
    return TASKS["commonsense"](dataset="csqa", pretrained=str(tiny_roberta),
                                data_dir=str(shared_data / "commonsenseqa"), max_train_examples=8, max_eval_examples=5,
                                batch_size=4, max_length=64, length_buckets=(64,), eval_batch_size=4)


def protein(shared_data, tiny_roberta):
    # an ESM built from a config (no checkpoint), as tests/test_protein_task.py's
    return TASKS["protein"](dataset="stability", pretrained=None, data_dir=str(shared_data / "tape_stability"),
                            model_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                                          "intermediate_size": 64},
                            max_train_examples=8, max_eval_examples=8, batch_size=4, length_buckets=(64,))


def translation(shared_data, tiny_roberta):
    # a tiny MBart with a FLORES-trained sentencepiece tokenizer, saved once beside the session's RoBERTa
    from hf_fixtures import tiny_translation_checkpoint

    directory = tiny_roberta.parent / "tiny_translation_mbart"
    if not (directory / "config.json").is_file():
        tiny_translation_checkpoint(directory, shared_data)
    return TASKS["translation"](setting="2to2", source="flores200", data_dir=str(shared_data / "flores200"),
                                pretrained=str(directory), cache_dir=str(directory / "token_cache"),
                                max_train_examples=8, max_eval_examples=1, grad_accum_steps=1, max_length=256,
                                length_buckets=(256,), truncate_eval=True, beam_size=2, max_len_b=4,
                                eval_batch_size=20)


FACTORIES = {"arithmetic": arithmetic, "commonsense": commonsense, "protein": protein, "translation": translation}


def test_every_registered_family_has_a_conformance_factory():
    assert set(FACTORIES) == set(TASKS)


@pytest.mark.parametrize("family", sorted(TASKS))
def test_task_follows_the_protocol(family, shared_data, tiny_roberta, tmp_path):
    task = FACTORIES[family](shared_data, tiny_roberta)
    assert isinstance(task, Task) and task.family == family and type(task) is TASKS[family]
    assert task.metric_mode in METRIC_MODES and task.selection in SELECTIONS and task.metrics
    params = task.init_params(jax.random.key(0))
    axes = task.param_axes()
    if axes is not None:
        assert jax.tree.structure(axes, is_leaf=lambda x: x is None or isinstance(x, jax.sharding.PartitionSpec)) \
            == jax.tree.structure(params)
    stream = task.train_stream(0)
    assert isinstance(stream, BatchStream)
    next(stream)
    position = stream.state()
    second = next(stream)
    stream.restore(position)
    again = next(stream)
    assert jax.tree.all(jax.tree.map(np.array_equal, second, again))
    assert jax.tree.structure(task.snip_batch(0)) == jax.tree.structure(second)
    algorithm = sp.RigL(sparsity=0.5, update_frequency=1)
    masks = algorithm.init_masks(params, MaskRules().masks(params, algorithm.name), key=jax.random.key(1))
    summary = fit(task, algorithm, tmp_path, seed=0, train_steps=2, params=sp.apply_masks(params, masks),
                  masks=masks, optimizer=Optimizer(kind="adam", learning_rate=1e-3),
                  config=TrainConfig(progress="off", log_every=1))
    assert summary["steps"] == 2 and summary["selected_step"] == 2 and summary["task"] == task.name
    assert summary["reported"] == summary["selected"][task.metric] and summary["metric_mode"] == task.metric_mode
    assert all(m in summary["selected"] for m in (task.metric, *task.metrics))
    assert abs(summary["actual_sparsity"] - 0.5) < 0.01


def _functions(module):
    for _, obj in inspect.getmembers(module):
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            yield obj.__qualname__, obj
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for name, member in vars(obj).items():
                fn = getattr(member, "__func__", member)
                if inspect.isfunction(fn):
                    yield f"{obj.__qualname__}.{name}", fn


def test_every_task_parameter_of_the_engine_and_cli_is_annotated_task():
    checked, bad = 0, []
    for package in (smc_jax.train, smc_jax.cli):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for name, fn in _functions(module):
                parameter = inspect.signature(fn).parameters.get("task")
                if parameter is None:
                    continue
                checked += 1
                if parameter.annotation not in ("Task", Task, "Callable[..., Task]"):
                    bad.append(f"{info.name}.{name}: {parameter.annotation!r}")
    assert checked >= 8 and not bad, bad
