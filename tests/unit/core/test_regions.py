"""Regions (core/regions.py) in this process: the token, the claim socket, sealed
descriptors handed over once, leases, the budget (past it: the stream, never an error),
and the directories of servers that died. Over the transports: tests/adapters/test_shared_memory.py."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pathlib
import subprocess
import sys
import time

import pytest

from jaxinit._shm import SharedMemory
from jaxinit.protocol.errors import PermissionDenied, ProtocolError
from jaxinit_server.core.regions import SOCKET_FILE, TOKEN_FILE, Region, Regions
from jaxinit_server.core.stored import SEALS


def _sealed(data: bytes) -> int:
    made = Region(len(data))
    made.reserve()
    made.write(data)
    return made.seal()


def test_the_token_is_checked_and_the_directory_is_private(tmp_path: pathlib.Path) -> None:
    regions = Regions(str(tmp_path))
    try:
        regions.check(regions.token)
        with pytest.raises(PermissionDenied, match=TOKEN_FILE):
            regions.check("0" * 64)
        directory = regions.directory
        assert directory.stat().st_mode & 0o777 == 0o700
        assert (directory / TOKEN_FILE).stat().st_mode & 0o777 == 0o600
        assert (directory / SOCKET_FILE).stat().st_mode & 0o777 == 0o600
    finally:
        regions.close()
    assert not directory.exists()


def test_a_region_is_claimed_once_sealed_and_a_wrong_token_gets_nothing(tmp_path: pathlib.Path) -> None:
    regions = Regions(str(tmp_path), lease_seconds=60)
    data = bytes(range(256)) * 16

    async def run() -> None:
        served = asyncio.ensure_future(regions.run())
        try:
            name = regions.offer(_sealed(data), len(data))
            assert name is not None and regions.state()["unclaimed_bytes"] == len(data)
            client = SharedMemory(True, "127.0.0.1")
            client.directory, client.token = str(regions.directory), regions.token
            mapped = await asyncio.to_thread(client.map, name, len(data))
            assert mapped.tobytes() == data and regions.state()["claimed"] == 1
            mapped[0] = 99  # private: the server's copy is untouched (and sealed anyway)
            with pytest.raises(ProtocolError, match="claimed already"):
                await asyncio.to_thread(client.map, name, len(data))
            thief = SharedMemory(True, "127.0.0.1")
            thief.directory, thief.token = str(regions.directory), "f" * 64
            other = regions.offer(_sealed(data), len(data))
            assert other is not None
            with pytest.raises(ProtocolError, match="not this server's"):
                await asyncio.to_thread(thief.map, other, len(data))
            assert regions.state()["unclaimed"] == 1  # the thief took nothing
            client.close()
        finally:
            served.cancel()

    try:
        asyncio.run(run())
    finally:
        regions.close()


def test_the_budget_and_the_lease(tmp_path: pathlib.Path) -> None:
    regions = Regions(str(tmp_path), lease_seconds=60, max_bytes=10_000)
    try:
        first = regions.offer(_sealed(b"x" * 6000), 6000)
        assert first is not None
        assert not regions.room(6000)  # past the budget: the caller streams instead
        assert regions.offer(_sealed(b"y" * 6000), 6000) is None
        assert regions.state()["streamed_for_room"] == 2
        regions.sweep()  # within the lease: nothing closed
        assert regions.state()["unclaimed"] == 1
        regions.sweep(now=time.monotonic() + 61)  # the lease has run out
        assert regions.state()["expired"] == 1 and regions.room(6000)
    finally:
        regions.close()


def test_a_sealed_region_cannot_be_changed() -> None:
    fd = _sealed(b"z" * 4096)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS == SEALS
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"a", 0)
    finally:
        os.close(fd)


def test_dead_servers_directories_go_and_live_ones_stay(tmp_path: pathlib.Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"jaxinit-{dead.pid}-abcdef"
    orphan.mkdir()
    (orphan / "lock").write_text("")
    live = Regions(str(tmp_path))
    try:
        assert not orphan.exists()
        beside = Regions(str(tmp_path))
        try:
            assert live.directory.exists() and beside.directory.exists()
        finally:
            beside.close()
    finally:
        live.close()
