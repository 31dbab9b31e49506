"""The report's record of when its rules were decided, read from git: the commit that introduced the rules'
version header, and for each group of runs how many eval.json files were committed after it, before it, or not
at all (a study folder outside the repository: not committed). Outside a repository: "unknown"."""
import subprocess

from eptk.reproduce import provenance


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


def add_run(repo, name):
    run = repo / "docs" / "findings" / "runs" / name
    run.mkdir(parents=True)
    (run / "eval.json").write_text("{}")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", f"run {name}")
    return run


def test_runs_before_and_after_the_rules_are_counted_from_git(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    early = add_run(repo, "early")
    rules = repo / provenance.RULES_FILE
    rules.write_text("# Decision rules for `eptk reproduce`, version 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "rules v1")
    middle = add_run(repo, "middle")              # after version 1, before version 2: before the rules applied
    rules.write_text(f"# Decision rules for `eptk reproduce`, version {provenance.RULES_VERSION}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "rules v2")
    rules_hash = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    rules.write_text(f"# Decision rules for `eptk reproduce`, version {provenance.RULES_VERSION}\n\nwording\n")
    git(repo, "commit", "-qam", "rules v2 reworded: the header's first commit still counts")
    late = add_run(repo, "late")
    elsewhere = tmp_path / "study" / "outside"    # a run in a study folder outside the repository
    elsewhere.mkdir(parents=True)
    (elsewhere / "eval.json").write_text("{}")
    uncommitted = repo / "docs" / "findings" / "runs" / "new"
    uncommitted.mkdir()
    (uncommitted / "eval.json").write_text("{}")

    rec = provenance.record(repo / "docs" / "findings", {"a": [early, middle, late], "b": [late, elsewhere,
                                                                                        uncommitted]})
    assert rec["rules"].split()[0] == rules_hash
    assert rec["groups"]["a"] == {"runs": 3, "after_rules": 1, "before_rules": 2, "not_committed": 0}
    assert rec["groups"]["b"] == {"runs": 3, "after_rules": 1, "before_rules": 0, "not_committed": 2}
    text = provenance.describe(rec)
    assert rules_hash[:10] in text and "a: 1 of 3 runs committed after the rules, 2 before" in text
    assert "b: 1 of 3 runs committed after the rules, 2 not committed" in text


def test_outside_a_repository_the_record_is_unknown(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text("{}")
    rec = provenance.record(tmp_path, {"a": [run]})
    assert rec == {"rules": "unknown", "groups": {"a": "unknown"}}
    assert "unknown" in provenance.describe(rec)


def test_an_amendment_s_runs_are_judged_by_the_amendment_s_commit(tmp_path):
    """RULES.md amendment 1 (claim 2's budget) came after version 2: a continued run committed before the amendment
    counts as before it, though it came after version 2; the version's own record is unchanged."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    rules = repo / provenance.RULES_FILE
    rules.parent.mkdir(parents=True)
    version = f"# Decision rules for `eptk reproduce`, version {provenance.RULES_VERSION}\n"
    rules.write_text(version)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "rules v2")
    first = add_run(repo, "v2-a-s0")
    early = add_run(repo, "v3-a-s0")                # continued before the amendment was committed
    header = next(iter(provenance.AMENDMENTS))
    amended = {header: {"continued": [early]}}
    missing = provenance.record(repo / "docs" / "findings", {"v2": [first]}, amended)
    assert missing["amendments"][header]["rules"] == "not committed"
    assert "not in this repository's history" in provenance.describe(missing)
    rules.write_text(version + "\n## Amendment 1 (claim 2's training budget), committed before its first run\n")
    git(repo, "commit", "-qam", "amendment 1")
    late = add_run(repo, "v3-b-s0")
    amended = {header: {"continued": [early, late]}}
    rec = provenance.record(repo / "docs" / "findings", {"v2": [first, early, late]}, amended)
    assert rec["groups"]["v2"] == {"runs": 3, "after_rules": 3, "before_rules": 0, "not_committed": 0}
    assert rec["amendments"][header]["groups"]["continued"] == {"runs": 2, "after_rules": 1, "before_rules": 1,
                                                                 "not_committed": 0}
    text = provenance.describe(rec)
    assert "amendment 1 (claim 2's training budget) was introduced by commit" in text
    assert "continued: 1 of 2 runs committed after it, 1 before" in text
