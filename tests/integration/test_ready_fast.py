"""A restart is ready without recomputing: the per-user compilation cache holds the compiled
programs and the self-check's verdict, and a second start reads both."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

import jaxinit
from helpers import local_jax, running_server


def _counter(http_url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{http_url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_a_second_start_reads_the_verdict_and_compiles_nothing_it_had(tmp_path: Path) -> None:
    # The default directory is per user: $XDG_CACHE_HOME/jaxinit/jax (not the suite's own).
    env = {"XDG_CACHE_HOME": str(tmp_path), "JAXINIT_COMPILATION_CACHE_DIR": ""}
    cache = tmp_path / "jaxinit" / "jax"
    args = ("--no-warm-up", "--log-level", "info")
    accounts, misses, hits = [], [], []
    for _ in range(2):
        with running_server(*args, env=env) as srv:
            with jaxinit.Client(srv.http_url) as client:
                got = client.lecun_normal()(5, (64, 48))
            assert np.asarray(got).tobytes() == np.asarray(local_jax("lecun_normal", {}, 5, (64, 48), None)).tobytes()
            misses.append(_counter(srv.http_url, "jaxinit_compilation_cache_total", result="miss"))
            hits.append(_counter(srv.http_url, "jaxinit_compilation_cache_total", result="hit"))
            assert srv.stop() == 0
        accounts.append(next(line for line in srv.output if "start-up:" in line))
        verdicts = list(cache.glob("jaxinit-self-check-*.json"))
        assert len(verdicts) == 1, verdicts
        assert any(cache.glob("*-cache")), "no compiled program was kept"
    assert "self-check verdict read" not in accounts[0] and "self-check verdict read" in accounts[1], accounts
    # The first start compiled (and wrote) the self-check's and the request's programs; the
    # second compiled nothing: it read the request's programs back.
    assert misses[0] > 0 and misses[1] == 0 and hits[1] > 0, (misses, hits)
