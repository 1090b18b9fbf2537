"""The memory `segment` may use: the tightest of MemAvailable, the cgroup limit and the rlimit."""

import resource

from zegot_jax.evaluation import memory

GIB = 2**30


def _proc(tmp_path, available_kib: int, virtual_pages: int = 0):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_kib} kB\n")
    (proc / "self" / "statm").write_text(f"{virtual_pages} 10 5 1 0 8 0\n")
    return proc


def test_the_tightest_limit_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "_device", lambda: None)  # a CPU host
    proc, cgroup = _proc(tmp_path, 8 * GIB // 1024), tmp_path / "cgroup"
    cgroup.mkdir()
    assert memory.available_bytes(proc=proc, cgroup=cgroup) == 8 * GIB  # MemAvailable only
    (cgroup / "memory.max").write_text(f"{3 * GIB}\n")  # a container limit of 3 GiB, 1 in use
    (cgroup / "memory.current").write_text(f"{1 * GIB}\n")
    assert memory.available_bytes(proc=proc, cgroup=cgroup) == 2 * GIB
    (cgroup / "memory.max").write_text("max\n")  # no limit
    assert memory.available_bytes(proc=proc, cgroup=cgroup) == 8 * GIB
    page = resource.getpagesize()
    proc = _proc(tmp_path / "b", 8 * GIB // 1024, virtual_pages=GIB // page)  # 1 GiB mapped
    monkeypatch.setattr(resource, "getrlimit", lambda _: (3 * GIB // 2, resource.RLIM_INFINITY))
    assert memory.available_bytes(proc=proc, cgroup=cgroup) == GIB // 2  # ulimit -v 1.5 GiB
