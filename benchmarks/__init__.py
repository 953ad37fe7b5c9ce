"""slimformer's benchmarks, one script a module, each run from the repository root:

    python -m benchmarks.NAME --help

What they share (the results writer with the CPU line on top, the quickstart on a fresh copy of
studies/, the finishing studies, the tiny test model, scoring, opening a stored study) is in
benchmarks/common.py; results are written to benchmarks/results/ (docs/benchmarks.md reads them).
No script edits sys.path or imports from tests/ (tests/test_house.py checks).
"""
