"""Forked workers for the reliability tests: start one, and wait for it with a deadline."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest


def fork(work: Callable[[], object]) -> int:
    """Run `work()` in a forked child; its exit code is 0 when it returns, 1 when it raises."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int, timeout: float = 60.0) -> int:
    """A forked worker's exit code. Forking after JAX or TensorFlow started threads can deadlock a
    child in principle: one stuck past `timeout` is killed and fails the test instead of hanging the run."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"worker {pid} did not finish in {timeout:.0f} s")
        time.sleep(0.005)
