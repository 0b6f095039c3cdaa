"""A served process's memory (app.memory): what large requests leave behind goes back to
the system once they end."""

from __future__ import annotations

import gc
import json
import platform
import subprocess
import sys
import weakref
from pathlib import Path

import httpx
import pytest
from support import ERRORGRAPH, LiveServer, rss_mib, running_server

from app.config import Settings
from app.memory import LargeBodyGarbage, trim_heap

GLIBC = platform.libc_ver()[0] == "glibc"


class _Cycle:
    """An object that only a garbage collection frees, as graphql-core's executor is."""

    def __init__(self) -> None:
        self.itself = self


def test_large_bodies_bring_a_collection_once_they_add_up():
    garbage = LargeBodyGarbage(every=3000, large=1000)
    enabled = gc.isenabled()
    gc.disable()  # only the collections it runs
    try:
        cycle = _Cycle()
        alive = weakref.ref(cycle)
        del cycle
        for small in (999, 999, 999, 999):
            garbage.ended(small)  # small bodies never count
        garbage.ended(0)
        garbage.ended(1500)
        assert alive() is not None and garbage.collections == 0
        garbage.ended(1500)
        assert alive() is None and garbage.collections == 1
        assert garbage.pending == 0
    finally:
        if enabled:
            gc.enable()


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_trim_heap_on_glibc():
    assert trim_heap()


# Large blocks allocated and freed in turn, as the bodies of large uploads are; the
# process's resident memory after, above what it had before (MiB).
_LARGE_BLOCKS = """
import re, sys
from app.memory import return_large_blocks

def rss() -> float:
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

if sys.argv[1] == "set":
    assert return_large_blocks()
before = rss()
for size in (24, 20, 16, 20):
    block = b"x" * (size << 20)
    del block
print(round(rss() - before))
"""


def test_large_freed_blocks_go_back_to_the_system():
    """With glibc's default, the 20 MiB block after a freed 24 MiB one comes from its
    heap and stays there when freed; a served process sets the size from which blocks
    are mapped on their own, and every one goes back."""
    if not GLIBC:
        pytest.skip("glibc's allocator only")

    def kept(mode: str) -> int:
        ran = subprocess.run(
            [sys.executable, "-c", _LARGE_BLOCKS, mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return int(ran.stdout)

    assert kept("default") >= 15
    assert kept("set") <= 3


def _source_map(size: int) -> str:
    """A source map of about `size` bytes, most of it the sources' content, in lines
    the way bundled modules are."""
    module = "\n".join(f"export const value{line} = compute({line}, 'x');" for line in range(400))
    count = size // len(module) + 1
    return json.dumps(
        {
            "version": 3,
            "sources": [f"webpack://app/./src/module{i}.js" for i in range(count)],
            "names": [],
            "mappings": ";".join("AAAA,CAAC" for _ in range(1000)),
            "sourcesContent": [module.replace("value", f"value{i}_") for i in range(count)],
        }
    )


def _upload(server: LiveServer, token: str, project_id: int, source_map: str) -> None:
    mutation = """mutation ($p: ID!, $map: String!) {
        uploadSourceMap(projectId: $p, release: "1.0", url: "/app.min.js", sourceMap: $map)
        { size }
    }"""
    answer = httpx.post(
        server.base_url + "/graphql",
        json={"query": mutation, "variables": {"p": str(project_id), "map": source_map}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["data"]["uploadSourceMap"]["size"] == len(source_map)


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_a_served_process_keeps_nothing_of_large_uploads(settings: Settings, tmp_path: Path):
    """Source maps of 16 MiB through GraphQL to `errorgraph serve`: what each left (its
    request in graphql-core's reference cycles, SQLite's statements holding the bytes
    bound to them, SQLAlchemy's cache of compiled statements holding the first map's,
    pages freed inside glibc's heaps) went back to the system. Before, the process grew
    by about 90 MiB for each upload."""
    with running_server(settings, tmp_path) as server:
        created = subprocess.run(
            [ERRORGRAPH, "project", "create", "Maps", "--json"],
            env=server.env,
            capture_output=True,
            text=True,
            check=True,
        )
        project = json.loads(created.stdout)
        pid = server.process.pid
        _upload(server, project["token"], project["id"], _source_map(64 * 1024))  # warm up
        before = rss_mib(pid)
        large = _source_map(16 * 1024 * 1024)
        for _ in range(3):
            _upload(server, project["token"], project["id"], large)
        # The collection runs on the event loop once an answer is sent, before the loop
        # takes the next request: this one is answered after it.
        assert httpx.get(server.base_url + "/health/live").status_code == 200
        after = rss_mib(pid)
        assert after - before < 12, (before, after)
