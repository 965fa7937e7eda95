"""The runtime exports each activation's ``__OW_*`` variables without leaking (found by bench/soak.py:
glibc's setenv keeps every value string it replaced, ~650 bytes a run with a new activation id each)."""

from __future__ import annotations

import ctypes
import os
import secrets
import subprocess

import psutil

from action_runtime.activation_env import export_env

NAME = "__OW_SOAK_TEST_ID"


def c_getenv(name: str) -> bytes | None:
    libc = ctypes.CDLL(None)
    libc.getenv.restype = ctypes.c_char_p
    libc.getenv.argtypes = [ctypes.c_char_p]
    value: bytes | None = libc.getenv(name.encode())
    return value


def test_exported_values_reach_python_c_and_child_processes() -> None:
    try:
        for value in ("a" * 32, "b" * 5, "c" * 500, "é ü"):  # shorter, longer than the buffer, non-ASCII
            export_env({NAME: value})
            assert os.environ[NAME] == value and os.getenv(NAME) == value
            assert c_getenv(NAME) == os.fsencode(value)
            child = subprocess.run(["sh", "-c", f'printf %s "${NAME}"'], capture_output=True, timeout=30)
            assert child.stdout == os.fsencode(value)
        os.environ[NAME] = "set elsewhere"  # someone else's setenv replaced the entry: the next export still wins
        export_env({NAME: "d" * 10})
        assert c_getenv(NAME) == b"d" * 10 and os.environ[NAME] == "d" * 10
    finally:
        os.environ.pop(NAME, None)


def test_a_new_activation_id_per_run_does_not_grow_memory() -> None:
    names = [f"{NAME}_{i}" for i in range(3)]
    try:
        export_env(dict.fromkeys(names, "x" * 32))
        proc = psutil.Process()
        before = proc.memory_info().rss
        for _ in range(60_000):  # setenv leaked ~11 MiB for this (3 variables, a new value each)
            value = secrets.token_hex(16)
            export_env(dict.fromkeys(names, value))
        grown = proc.memory_info().rss - before
        assert grown < 2 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over 60,000 exports"
    finally:
        for name in names:
            os.environ.pop(name, None)
