"""Returning freed memory to the OS (mind_diffusion/memory.py) and the compiled-call entry that uses
it (mind_diffusion/timings.call): the trim gives back what was freed and nothing in use; a graph-mode
cell compiles once per input signature, releases the compiler's memory once, and computes what a plain
call computes, in graph and pynative mode."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn, ops

from mind_diffusion import memory, timings

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or memory._malloc_trim() is False,
                           reason="malloc_trim is glibc's (Linux); elsewhere release_freed does nothing")


@glibc
def test_release_freed_gives_back_what_was_freed_and_keeps_what_is_in_use():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count, keep_every = 4096, 64 * 1024, 64                 # 256 MiB in small (heap) blocks
    memory.release_freed()
    base = memory.resident_mb()
    blocks = [libc.malloc(size) for _ in range(count)]
    assert all(blocks)
    for b in blocks:                                               # touch every page
        ctypes.memset(b, 1, size)
    full = memory.resident_mb()
    assert full - base > 200
    # free all but every 64th block: the kept ones pin the heap, so glibc cannot shrink it by itself
    kept = blocks[keep_every - 1::keep_every]
    for i, b in enumerate(blocks):
        if (i + 1) % keep_every:
            libc.free(b)
    after_free = memory.resident_mb()
    assert full - after_free < 20, "glibc returned the pages by itself; the test no longer shows the trim"
    assert memory.release_freed() is True
    trimmed = memory.resident_mb()
    freed_mb = size * (count - len(kept)) / 2**20
    assert after_free - trimmed > 0.8 * freed_mb, (after_free, trimmed, freed_mb)
    # asked only for growth since a point: nothing to do when the process has not grown (a cache hit)
    assert memory.release_freed(grown_from=memory.resident_mb()) is False
    # what is in use is untouched: the kept blocks still hold their bytes
    for b in kept:
        assert ctypes.string_at(b, size) == b"\x01" * size
        libc.free(b)


class _Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(6, 4)

    def construct(self, x, s):
        return ops.tanh(self.dense(x)) * s


def test_compiled_call_compiles_once_per_signature_and_matches_a_plain_call(ms_mode, monkeypatch):
    ms.set_seed(0)
    net = _Net()
    releases = []
    monkeypatch.setattr(memory, "release_freed", lambda **k: releases.append(k) or True)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(shape).astype(np.float32) for shape in ((3, 6), (3, 6), (5, 6), (3, 6))]
    s = Tensor(np.float32(0.5))
    outs = [timings.call(net, Tensor(x), s).asnumpy() for x in xs]
    w, b = net.dense.weight.asnumpy(), net.dense.bias.asnumpy()
    for got, x in zip(outs, xs):
        np.testing.assert_allclose(got, np.tanh(x @ w.T + b) * 0.5, rtol=1e-5, atol=1e-6)
    for got, x in zip(outs, xs):
        np.testing.assert_array_equal(got, net(Tensor(x), s).asnumpy())
    if ms_mode == "graph":   # two input signatures, (3, 6) and (5, 6): two explicit compiles, two releases
        assert len(timings._compiled[net]) == 2 and len(releases) == 2
        assert all(r["grown_from"] > 0 for r in releases)     # each told the resident size before its compile
    else:
        assert net not in timings._compiled and releases == []


def test_compiled_call_just_calls_what_is_not_a_cell(graph_mode, monkeypatch):
    """A plain function (or a test's stand-in for a network) goes through ``call`` unchanged in graph mode:
    nothing to compile, nothing released."""
    releases = []
    monkeypatch.setattr(memory, "release_freed", lambda **k: releases.append(k) or True)
    assert timings.call(lambda a, b: a * 10 + b, 4, 2) == 42
    assert releases == []
