"""The README documents what users rely on: the two commands, every summary column, every prior."""
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_two_commands():
    assert "make demo" in README and "make test" in README


def test_every_summary_column_documented():
    """The README's column tables are the ones generated from the column entries, word for word: a column
    added, renamed or re-described in eptk/analysis/columns.py without regenerating them fails here."""
    from eptk.analysis import SUMMARY_COLUMNS, SUMMARY_COLUMNS_MARKDOWN
    assert SUMMARY_COLUMNS_MARKDOWN in README, "paste eptk.analysis.SUMMARY_COLUMNS_MARKDOWN into the README"
    missing = [c for c in SUMMARY_COLUMNS if f"`{c}`" not in README]
    assert not missing, missing


def test_every_prior_documented():
    from eptk.priors import PRIORS
    for name in PRIORS:
        assert f"`{name}" in README, name


def test_every_method_and_task_documented():
    from eptk.methods import METHODS
    from eptk.tasks import TASKS
    for name in [*METHODS, *TASKS]:
        assert f"`{name}" in README, name


def test_layout_names_every_module():
    """The README's Layout section lists every module and package of eptk/."""
    layout = README[README.index("## Layout"):README.index("## Not built yet")]
    root = Path(__file__).parent.parent / "eptk"
    names = [p.name for p in root.iterdir() if (p.suffix == ".py" and p.stem != "__init__")
             or (p.is_dir() and (p / "__init__.py").is_file())]
    missing = [n for n in names if (n if n.endswith(".py") else n + "/") not in layout]
    assert not missing, missing


def test_model_table_lists_every_family():
    """The README's model-support table has a row for every architecture eptk accepts."""
    from eptk.families import FAMILIES
    table = README[README.index("| family (`model_type`)"):README.index("### Methods")]
    missing = [model_type for model_type in FAMILIES if f"(`{model_type}`)" not in table]
    assert not missing, missing


def readme_verdicts(readme: str, words) -> dict[str, str]:
    """claim number -> verdict, from the numbered lines of the README's findings section: each opens with
    `N. **<the claim>: <verdict>...**`; a numbered line there whose bold part states no verdict is an error."""
    import re

    start = readme.index("\n## Findings")
    end = readme.find("\n## ", start + 1)
    verdicts = {}
    for number, bold in re.findall(r"^(\d+)\. \*\*(.+?)\*\*", readme[start:end if end > 0 else None], re.M):
        stated = bold.rsplit(": ", 1)[-1]
        found = [w for w in sorted(words, key=len, reverse=True) if stated.startswith(w)]
        assert found, f"README findings line {number} states no verdict ({', '.join(words)}): {bold!r}"
        verdicts[number] = found[0]
    return verdicts


def test_findings_verdicts_are_the_studys():
    """The verdict the README states for each claim is the one docs/findings/claims.json gives, claim for claim,
    and every claim of the committed study has its line."""
    import json

    from eptk.reproduce.claims import FAILS, HOLDS, NOT_MEASURED, UNSURE

    claims = json.loads((Path(__file__).parent.parent / "docs" / "findings" / "claims.json").read_text())["claims"]
    study = {str(c["claim"]): c["verdict"] for c in claims}
    assert readme_verdicts(README, {HOLDS, FAILS, UNSURE, NOT_MEASURED, *study.values()}) == study
