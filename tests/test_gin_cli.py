"""The T5X-style gin command line (smc_jax.cli.gin_cli, gin_errors): flags, macros, bound values, overrides,
one-line errors."""

from __future__ import annotations

import pytest

import gin
from smc_jax.cli import gin_cli as gu
from smc_jax.cli.gin_cli import ConfigError

# The gin registry is global: unique names so that nothing else in the test session collides.


@gin.configurable("test_gin_cli_task")
def _task(sparsity=0.0, data_dir="unset", fold=0, name="x"):
    return {"sparsity": sparsity, "data_dir": data_dir, "fold": fold, "name": name}


@gin.configurable("test_gin_cli_train")
def _train(log_every=10, steps=100, task=None):
    return {"log_every": log_every, "steps": steps, "task": task}


TASK_GIN = """
SPARSITY = 0.5
DATA_DIR = '../shared/data/arithmetic'
FOLD = 0
ALIAS = %SPARSITY
test_gin_cli_task.sparsity = %SPARSITY
test_gin_cli_task.data_dir = %DATA_DIR
test_gin_cli_task.fold = %FOLD
"""

TOP_GIN = """
include 'tasks/task.gin'
BATCH_SIZE = 8
test_gin_cli_train.steps = %BATCH_SIZE
test_gin_cli_train.task = @test_gin_cli_task()
"""


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def gin_dir(tmp_path):
    (tmp_path / "gin" / "tasks").mkdir(parents=True)
    (tmp_path / "gin" / "tasks" / "task.gin").write_text(TASK_GIN)
    (tmp_path / "gin" / "top.gin").write_text(TOP_GIN)
    (tmp_path / "gin" / "other.gin").write_text("include 'tasks/task.gin'\ninclude 'shared.gin'\n")
    (tmp_path / "gin" / "shared.gin").write_text("test_gin_cli_train.log_every = 5\n")  # included only
    return tmp_path / "gin"


def _parse(gin_dir, *argv, files=("top.gin",)):
    argv = [f"--gin_file={f}" for f in files] + list(argv)
    rest = gu.parse_command_line(argv, search_paths=[gin_dir])
    assert rest == []


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    return msg


# ------------------------------------------------------------------------------------------- flags


def test_split_gin_args_mixed_argv():
    argv = [
        "--gin_file=a.gin",
        "--gin_file", "b.gin",
        "--gin.SPARSITY=0.7",
        "--coordinator_address=1.2.3.4:5",
        "--gin_bindings=test_gin_cli_train.steps = 3",
        "--gin_bindings", "X = 1\nY = 2",
        "--gin.train.x=3",
        "--gin.scope/fn.param='a=b'",
        "--verbose",
        "--gin.SPARSITY=0.9",
    ]
    files, bindings, rest = gu.split_gin_args(argv)
    assert files == ["a.gin", "b.gin"]
    assert bindings == [
        "SPARSITY=0.7",
        "test_gin_cli_train.steps = 3",
        "X = 1\nY = 2",
        "train.x=3",
        "scope/fn.param='a=b'",
        "SPARSITY=0.9",
    ]
    assert rest == ["--coordinator_address=1.2.3.4:5", "--verbose"]
    # everything from a ``--`` on is the caller's
    assert gu.split_gin_args(["--gin.A=1", "--", "--gin.B=2"]) == ([], ["A=1"], ["--", "--gin.B=2"])


@pytest.mark.parametrize("argv", [["--gin.SPARSITY"], ["--gin.=3"], ["--gin_file"], ["--gin_file", "--x"],
                                  ["--gin_bindings="]])
def test_split_gin_args_errors(argv):
    msg = _error(gu.split_gin_args, argv)
    assert argv[0].split("=")[0] in msg or "--gin." in msg


# ------------------------------------------------------------------------------------------- macros


def test_macros_from_files_and_overrides_reach_the_configurable(gin_dir):
    _parse(gin_dir)
    assert gu.defined_macros() == {"ALIAS": 0.5, "BATCH_SIZE": 8, "DATA_DIR": "../shared/data/arithmetic",
                                   "FOLD": 0, "SPARSITY": 0.5}
    gin.clear_config()

    _parse(gin_dir, "--gin.SPARSITY=0.7", "--gin_bindings=SPARSITY = 0.9",
           "--gin.test_gin_cli_train.log_every=3")
    assert gu.macro_value("SPARSITY") == 0.9  # later wins
    assert gu.macro_value("ALIAS") == 0.9  # ``ALIAS = %SPARSITY`` follows the override
    assert gu.macro_value("NOPE", default="d") == "d"
    out = _train()
    assert out["log_every"] == 3 and out["steps"] == 8
    assert out["task"]["sparsity"] == 0.9 and out["task"]["data_dir"] == "../shared/data/arithmetic"
    assert "SPARSITY = 0.9" in gu.config_str()
    assert "test_gin_cli_train.log_every = 3" in gu.operative_config()


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--gin.DATA_DIR='../shared/data/other'", "../shared/data/other"),
        ('--gin.DATA_DIR="../shared/data/dq"', "../shared/data/dq"),
        ("--gin.DATA_DIR=None", None),
        ("--gin.DATA_DIR='all'", "all"),
        ("--gin.DATA_DIR=%SPARSITY", 0.5),
    ],
)
def test_macro_values_through_the_command_line(gin_dir, flag, expected):
    _parse(gin_dir, flag)
    assert gu.macro_value("DATA_DIR") == expected
    assert _task()["data_dir"] == expected


def test_search_path_file_and_cwd_relative_file(gin_dir, monkeypatch):
    monkeypatch.chdir(gin_dir.parent)
    _parse(gin_dir, files=["gin/top.gin"])  # as given, relative to the working directory
    assert gu.macro_value("BATCH_SIZE") == 8


def test_finalize_locks_and_parse_unlocks(gin_dir):
    _parse(gin_dir)
    gu.finalize()
    gu.finalize()  # idempotent
    with pytest.raises(RuntimeError):
        gin.bind_parameter("test_gin_cli_train.steps", 1)
    _parse(gin_dir, "--gin.FOLD=2")
    assert gu.macro_value("FOLD") == 2


def test_macro_detection_fallback_agrees_with_registry(gin_dir):
    _parse(gin_dir)
    from_registry = gu._macro_names_from_registry()
    assert sorted(from_registry) == ["ALIAS", "BATCH_SIZE", "DATA_DIR", "FOLD", "SPARSITY"]
    assert sorted(gu._macro_names_from_config_str(gu.config_str())) == sorted(from_registry)


def test_bound_values_and_a_configurables_bindings(gin_dir):
    _parse(gin_dir, "--gin.SPARSITY=0.7", "--gin.test_gin_cli_task.name='n'")
    assert gu.binding_value("test_gin_cli_task.sparsity") == 0.7  # ``%SPARSITY`` followed
    assert gu.binding_value("test_gin_cli_task.name") == "n"
    assert gu.binding_value("test_gin_cli_task.nothing_bound", default="d") == "d"
    assert gu.binding_value("test_gin_cli_train.log_every") is None  # a parameter nothing binds
    assert gu.configurable_bindings("test_gin_cli_task") == {
        "sparsity": 0.7, "data_dir": "../shared/data/arithmetic", "fold": 0, "name": "n"}
    assert set(gu.configurable_bindings("test_gin_cli_train")) == {"steps", "task"}
    assert gu.configurable_bindings("test_gin_cli_train")["steps"] == 8
    assert gu.configurable_bindings("nothing_of_that_name") == {}


def test_top_level_files_of_a_subfolder(gin_dir):
    from smc_jax.cli.gin_errors import top_level_files

    (gin_dir / "tasks" / "family.gin").write_text("FAMILY = 1\n")
    (gin_dir / "tasks" / "member.gin").write_text("include 'tasks/family.gin'\n")
    assert top_level_files(gin_dir / "tasks", gin_dir) == ["member.gin", "task.gin"]  # top.gin is above tasks/
    assert top_level_files(gin_dir) == ["other.gin", "top.gin"]


# ------------------------------------------------------------------------------------------- errors


def test_unknown_macro_lists_the_defined_ones(gin_dir):
    msg = _error(_parse, gin_dir, "--gin.EPOCHS=3")
    assert msg.startswith("unknown macro EPOCHS (from --gin.EPOCHS=3)")
    for name in ("BATCH_SIZE", "DATA_DIR", "FOLD", "SPARSITY"):
        assert name in msg
    assert gin.config_str().strip() == ""  # a failed parse leaves gin cleared

    assert "did you mean SPARSITY?" in _error(_parse, gin_dir, "--gin.sparsity=0.9")
    # a macro only top.gin defines is unknown to a config without it
    assert "unknown macro BATCH_SIZE" in _error(_parse, gin_dir, "--gin.BATCH_SIZE=4", files=["other.gin"])


def test_unknown_macro_reference(gin_dir):
    msg = _error(_parse, gin_dir, "--gin.test_gin_cli_train.steps=%STEPS")
    assert "%STEPS" in msg and "SPARSITY" in msg
    bad_ref = "include 'tasks/task.gin'\ntest_gin_cli_train.steps = %NUM_STEPS\n"
    (gin_dir / "bad_ref.gin").write_text(bad_ref)
    msg = _error(_parse, gin_dir, files=["bad_ref.gin"])
    assert "%NUM_STEPS is used by test_gin_cli_train.steps but never defined" in msg


def test_unknown_configurable_and_parameter(gin_dir):
    msg = _error(_parse, gin_dir, "--gin.test_gin_cli_trian.steps=3")
    assert "test_gin_cli_trian.steps=3" in msg and "No configurable matching" in msg
    assert "did you mean test_gin_cli_train" in msg
    msg = _error(_parse, gin_dir, "--gin_bindings=test_gin_cli_train.stpes = 3")
    assert "test_gin_cli_train.stpes = 3" in msg and "stpes" in msg
    assert "log_every, steps, task" in msg


@pytest.mark.parametrize(
    ("flag", "fragment"),
    [
        ("--gin.SPARSITY=abc", "cannot parse value 'abc' (strings need quotes"),
        ("--gin.SPARSITY=[1,", "unexpected end of input"),
        ("--gin.SPARSITY=", "syntax error"),
        ("--gin_bindings=SPARSITY = 0.1\n= 3", "syntax error"),
    ],
)
def test_bad_values_and_syntax(gin_dir, flag, fragment):
    msg = _error(_parse, gin_dir, flag)
    assert msg.startswith("bad gin binding") and fragment in msg


def test_missing_files_and_includes(gin_dir, caplog):
    prefixes_before = list(gin.config._LOCATION_PREFIXES)
    msg = _error(_parse, gin_dir, files=["nope.gin"])
    assert "gin file not found: nope.gin" in msg and "gin" in msg and "top.gin" in msg
    (gin_dir / "bad_include.gin").write_text("FOO = 1\ninclude 'tasks/missing.gin'\n")
    msg = _error(_parse, gin_dir, files=["bad_include.gin"])
    assert "gin file not found: tasks/missing.gin" in msg and "bad_include.gin line 2" in msg
    assert str(gin_dir) in msg  # the search path
    assert not [r for r in caplog.records if "Path not found" in r.getMessage()]  # gin's probing is muted

    msg = _error(gu.parse_config, [], [], search_paths=[gin_dir])
    assert msg.startswith("no --gin_file given; e.g. --gin_file=")
    assert "other.gin" in msg and "top.gin" in msg
    assert "task.gin" not in msg and "shared.gin" not in msg  # top-level experiments only, not included files
    assert "no --gin_file given" in _error(gu.parse_config, [], [])
    assert gin.config._LOCATION_PREFIXES == prefixes_before  # search paths restored after each parse


def test_errors_inside_gin_files(gin_dir):
    (gin_dir / "syntax.gin").write_text("A = 1\nB = [1, 2\nC = 3\n")
    msg = _error(_parse, gin_dir, files=["syntax.gin"])
    assert "syntax.gin" in msg
    (gin_dir / "unknown.gin").write_text("A = 1\ntest_gin_cli_nothing.x = 2\n")
    msg = _error(_parse, gin_dir, files=["unknown.gin"])
    assert "No configurable matching 'test_gin_cli_nothing'" in msg and "unknown.gin line 2" in msg
    (gin_dir / "word.gin").write_text("A = hello\n")
    msg = _error(_parse, gin_dir, files=["word.gin"])
    assert "cannot parse value 'hello'" in msg and "word.gin line 1" in msg
