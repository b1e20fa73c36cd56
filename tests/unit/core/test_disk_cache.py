"""The disk cache (core/disk_cache.py), in this process through ``Service``: entries
survive a restart; a flipped byte, a changed key or digest, a FIFO, a link or a file of
the wrong size is never served (deleted, the tensor made again, exact); a directory
others can write is refused; the index is read once; the write queue is bounded."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import threading
from typing import Any

import numpy as np
import pytest

from helpers import local_jax
from jaxinit.protocol.keys import Key
from jaxinit_server.core import GenerateParams, Limits, Service
from jaxinit_server.core.disk_cache import DiskCache, UnsafeDirectory
from jaxinit_server.core.results import DISK, HIT, MISS
from jaxinit_server.core.stored import Stored

SHAPE = (512, 256)


def _service(directory: pathlib.Path, **kwargs: Any) -> Service:
    service = Service(Limits(max_tensor_bytes=2**27), cache_dir=str(directory), **kwargs)
    service.ready = True
    return service


async def _fetch(service: Service, seed: int = 9, **kwargs: Any) -> tuple[bytes, str]:
    request = GenerateParams("glorot_uniform", SHAPE, key=Key(seed=seed), **kwargs)
    tensor = await service.generate(service.prepare(request))
    data = b"".join([bytes(p) async for _, p in tensor.chunks(2**20)])
    return data, tensor.cache


def _expected(seed: int = 9) -> bytes:
    return np.asarray(local_jax("glorot_uniform", {}, seed, SHAPE, None)).tobytes()


def _stored_once(directory: pathlib.Path, seed: int = 9) -> None:
    """Make the tensor with a server using ``directory`` and wait for its entry on disk."""
    service = _service(directory)

    async def run() -> None:
        assert await _fetch(service, seed) == (_expected(seed), MISS)
        while service.results._flights or not service.results.disk or service.results.disk.state()["queued_bytes"]:
            await asyncio.sleep(0.01)
        while not list(directory.glob("*.json")):
            await asyncio.sleep(0.01)

    try:
        asyncio.run(run())
    finally:
        service.close()


def _served(directory: pathlib.Path) -> tuple[bytes, str, dict[str, Any]]:
    service = _service(directory)
    try:
        assert service.results.disk is not None and service.results.disk.loaded.wait(30)
        data, how = asyncio.run(_fetch(service))
        return data, how, service.results.state()
    finally:
        service.close()


def test_an_entry_survives_a_restart_and_a_range_of_it_is_a_hit(tmp_path: pathlib.Path) -> None:
    _stored_once(tmp_path)
    service = _service(tmp_path)

    async def run() -> None:
        service.results.disk.loaded.wait(30)  # type: ignore[union-attr]
        assert await _fetch(service) == (_expected(), DISK)
        while service.results._flights:
            await asyncio.sleep(0.01)
        part, how = await _fetch(service, offset=3, count=5)
        assert how == HIT and part == _expected()[12:32]

    try:
        asyncio.run(run())
    finally:
        service.close()


def _corrupt_byte(directory: pathlib.Path) -> None:
    (data,) = directory.glob("*.bin")
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))


def _corrupt_key(directory: pathlib.Path) -> None:
    (meta,) = directory.glob("*.json")
    info = json.loads(meta.read_text())
    info["key_data"] = [1, 2]  # the bytes untouched: only the key the answer would claim
    meta.write_text(json.dumps(info))


def _fifo(directory: pathlib.Path) -> None:
    (data,) = directory.glob("*.bin")
    data.unlink()
    os.mkfifo(data)  # a read of it would wait forever


def _link(directory: pathlib.Path) -> None:
    (data,) = directory.glob("*.bin")
    target = directory.parent / "elsewhere.bin"
    target.write_bytes(data.read_bytes())
    data.unlink()
    data.symlink_to(target)


def _short(directory: pathlib.Path) -> None:
    (data,) = directory.glob("*.bin")
    data.write_bytes(data.read_bytes()[:-4])


@pytest.mark.parametrize("damage", [_corrupt_byte, _corrupt_key, _fifo, _link, _short])
def test_a_damaged_entry_is_never_served(tmp_path: pathlib.Path, damage: Any) -> None:
    directory = tmp_path / "cache"
    _stored_once(directory)
    damage(directory)
    data, how, state = _served(directory)
    assert data == _expected() and how == MISS
    assert state["disk_rejected_total"] == 1


def test_a_directory_others_can_write_is_refused(tmp_path: pathlib.Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(UnsafeDirectory, match="chmod go-w"):
        DiskCache(str(shared), 2**30, "x")
    fresh = tmp_path / "fresh"
    cache = DiskCache(str(fresh), 2**30, "x")
    cache.close()
    assert fresh.stat().st_mode & 0o777 == 0o700


def test_the_index_is_read_once_and_trims_without_scanning(tmp_path: pathlib.Path, monkeypatch: Any) -> None:
    """5,000 entries on disk: read once at start; writing more trims by the index alone."""
    for i in range(5000):
        (tmp_path / f"{i:064x}.bin").write_bytes(b"\0" * 16)
        (tmp_path / f"{i:064x}.json").write_text("{}")
    scans = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: scans.append(path) or real(path))
    cache = DiskCache(str(tmp_path), 5000 * 18 + 100_000, "x")
    try:
        assert cache.loaded.wait(60) and cache.state()["entries"] == 5000
        written = threading.Semaphore(0)
        for i in range(20):
            stored = Stored(16_384, np.dtype(np.float32), sealed=False)
            stored.write(np.full(16_384, i, np.float32))
            stored.finish()
            assert cache.write(f"new{i}", stored, {"key_data": [0, i]}, written.release)
        for _ in range(20):  # each one's done() is called once the writer has finished with it
            assert written.acquire(timeout=60)
        assert len(scans) == 1  # the one read at start
        assert cache.state()["bytes"] <= cache.max_bytes and cache.contains("new19")
        assert not cache.contains(f"{0:064x}")  # the oldest went first
    finally:
        cache.close()


def test_the_write_queue_is_bounded_in_bytes(tmp_path: pathlib.Path) -> None:
    cache = DiskCache(str(tmp_path), 2**30, "x", queue_bytes=2**20)
    try:
        stored = Stored(2**19, np.dtype(np.float32), sealed=False)  # 2 MiB: more than the queue holds
        stored.write(np.zeros(2**19, np.float32))
        stored.finish()
        assert not cache.write("big", stored, {}, lambda: None)
        assert cache.counts["disk_dropped"] == 1
    finally:
        cache.close()
