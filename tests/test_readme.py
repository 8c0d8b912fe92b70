import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_reaches_its_sparsity(capsys):
    text = README.read_text()
    match = re.search(r"<!-- readme-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "README example block not found"
    exec(compile(match.group(1), "README example", "exec"), {})
    line = capsys.readouterr().out.strip().splitlines()[-1]
    loss, sparsity = map(float, re.fullmatch(r"loss ([\d.]+), sparsity ([\d.]+)", line).groups())
    assert abs(sparsity - 0.9) < 0.01
    assert loss < 0.5


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "pip install -e '.[test]'" in README.read_text()
    assert re.search(r"^\s*pytest\b", ci, re.M)


def test_readme_is_a_front_door_linking_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    pages = sorted(p.name for p in (README.parent / "docs").glob("*.md"))
    assert pages and all(f"docs/{page}" in text for page in pages), pages
