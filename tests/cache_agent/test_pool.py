"""The DRAM pool says which page size it got (smaps), and what to do about 4 KiB pages."""

from __future__ import annotations

import mmap
import os
import subprocess
from pathlib import Path

import pytest

from cache_agent.pool import HUGE_PAGE, DramPool, parse_smaps, pool_page_advice, tmpfs_huge_option

SMAPS = """\
7f0000000000-7f0000200000 rw-s 00000000 00:1a 123 /dev/shm/a.pool
Size:               2048 kB
Rss:                2048 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
7f0000200000-7f0000600000 rw-s 00000000 00:2b 456 /mnt/huge/b.pool
Size:               4096 kB
Rss:                4096 kB
ShmemPmdMapped:     4096 kB
FilePmdMapped:         0 kB
VmFlags: rd wr sh mr mw me ms sd hg
"""


def test_parse_smaps_reads_the_entry_holding_the_address() -> None:
    assert parse_smaps(SMAPS, 0x7F0000000000 + 10) == (2048 * 1024, 0)
    assert parse_smaps(SMAPS, 0x7F0000300000) == (4096 * 1024, 4096 * 1024)
    assert parse_smaps(SMAPS, 0x1000) == (0, 0)


def test_tmpfs_huge_option(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("tmpfs /dev/shm tmpfs rw,relatime 0 0\n"
                      "none /srv/pool tmpfs rw,relatime,size=4194304k,huge=always 0 0\n"
                      "/dev/vda / ext4 rw,relatime 0 0\n")
    assert tmpfs_huge_option(Path("/srv/pool/sub"), mounts) == "always"
    assert tmpfs_huge_option(Path("/dev/shm"), mounts) is None
    assert tmpfs_huge_option(Path("/var/tmp"), mounts) is None


def test_advice_only_for_small_pages() -> None:
    assert pool_page_advice(HUGE_PAGE, Path("/p"), "always", "never") is None
    advice = pool_page_advice(4096, Path("/dev/shm"), None, "never")
    assert advice is not None and "huge=always" in advice and "'never'" in advice
    advice = pool_page_advice(4096, Path("/p"), "never", "never")
    assert advice is not None and "huge=never" in advice


def test_a_real_pool_reports_what_smaps_says(tmp_path: Path) -> None:
    pool = DramPool(Path("/dev/shm"), f"test-{os.getpid()}", 8 * 1024 * 1024)
    try:
        assert pool.page_bytes in (mmap.PAGESIZE, HUGE_PAGE)
        assert (pool.page_bytes == HUGE_PAGE) == (pool.huge_share >= 0.5)
        assert (pool.advice is None) == (pool.page_bytes == HUGE_PAGE)
    finally:
        pool.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_pool_on_a_huge_always_tmpfs_gets_huge_pages(tmp_path: Path) -> None:
    where = tmp_path / "huge"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=always,size=64m", "faas-llm-test", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        assert tmpfs_huge_option(where) == "always"
        pool = DramPool(where, f"test-{os.getpid()}", 16 * 1024 * 1024)
        try:
            assert pool.page_bytes == HUGE_PAGE and pool.advice is None
        finally:
            pool.close()
    finally:
        subprocess.run(["umount", str(where)], check=False)
