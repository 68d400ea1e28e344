"""Fuzzing of statefmt's file reading (format 2.0 and 1.0): mutate valid files, demand their data or a refusal.

`python -m fuzz --inputs N` is the seeded structure-aware run (`fuzz.mutations`: re-sealed
documents, block checksums and stream index among its mutations); `python -m fuzz.coverage` the
coverage-guided one (atheris). tests/core/test_reliability.py runs the same mutations under
hypothesis in the normal suite, and checks that they reach the checks behind the checksums.
"""
