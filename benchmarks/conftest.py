"""pytest configuration for the benchmark suites: collect `bench_*.py` files (pytest's default
pattern only knows `test_*.py`), so `pytest benchmarks/` runs every suite."""
import pytest


def pytest_collect_file(parent, file_path):
    # Files named on the command line are collected by pytest itself; don't collect them twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") \
            and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
