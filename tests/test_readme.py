"""The README documents what users rely on: the two commands, every summary column, every prior."""
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_two_commands():
    assert "make demo" in README and "make test" in README


def test_every_summary_column_documented():
    from eptk.analysis import SUMMARY_COLUMNS
    missing = [c for c in SUMMARY_COLUMNS if f"`{c}`" not in README and f"`{c.replace('prior_', '')}`" not in README
               and c.replace("prior_", "").replace("post_", "") not in README]
    assert not missing, missing


def test_every_prior_documented():
    from eptk.priors import PRIORS, _load_region_priors
    _load_region_priors()
    for name in PRIORS:
        assert f"`{name}" in README, name
