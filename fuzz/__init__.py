"""Fuzzing of statefmt's file reading: mutate valid files, demand a valid state or a StateFormatError.

`python -m fuzz --inputs N` is the long run; tests/test_reliability.py runs the same mutations
under hypothesis in the normal suite.
"""
