"""The CLI's flags and messages, without a server: help on every flag and the right defaults,
did-you-mean on every closed set, `jaxinit export` errors that say what to install or pass,
the `wrote` line's words, and a progress bar from the first second for a large tensor."""

from __future__ import annotations

import argparse
import builtins
import sys
import threading
from typing import Any

import pytest

import jaxinit
from jaxinit import _client, cli
from jaxinit.protocol.errors import InvalidArgument, did_you_mean
from jaxinit.protocol.expansion import expand


def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    out = {"jaxinit": parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def test_every_flag_and_argument_has_help() -> None:
    for name, parser in _parsers().items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.option_strings or action.dest)


def test_help_says_what_dash_writes() -> None:
    parsers = _parsers()
    assert "safetensors for -" in parsers["model"].format_help()
    assert "npy for -" not in parsers["model"].format_help()
    assert "npy for -" in parsers["get"].format_help()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["gett", "normal"], "Did you mean get?"),
        (["describ", "normal"], "Did you mean describe?"),
        (["get", "normal", "--shape", "2", "--seed", "0", "--dtype", "flaot32", "-o", "x.npy"], "Did you mean float32"),
        (["get", "normal", "--shape", "2", "--seed", "0", "--format", "npzz", "-o", "-"], "Did you mean npz?"),
        (["model", "m.json", "--seed", "0", "--layout", "torhc", "-o", "m.safetensors"], "Did you mean torch?"),
        (["model", "m.json", "--seed", "0", "--mode", "nxx", "-o", "m.safetensors"], "Did you mean nnx?"),
        (["model", "m.json", "--seed", "0", "--param-dtype", "bfloat61", "-o", "m.npz"], "Did you mean bfloat16"),
        (["export", "m:M", "--input-shape", "1,2", "--input-dtype", "int23"], "Did you mean int32"),
    ],
)
def test_did_you_mean_on_every_closed_set(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_did_you_mean_in_descriptions_and_v2() -> None:
    from jaxinit_server.kserve.mapping import check_model

    for description, says in (
        ({"type": "Sequentail", "layers": []}, "Did you mean Sequential?"),
        ({"type": "Dense", "in_features": 2, "features": 3, "use_bais": False}, "Did you mean use_bias?"),
        ({"params": [], "param_dtyp": "float32"}, "Did you mean param_dtype"),
        ({"parms": []}, "a module needs a 'type'"),
    ):
        with pytest.raises(InvalidArgument, match=says.replace("?", r"\?")):
            expand(description)
    with pytest.raises(jaxinit.UnknownInitializer, match=r"Did you mean lecun_normal"):
        check_model("lecun_normall")
    assert did_you_mean("x" * 200, ["x"]) == ""  # a long word is not compared


def test_export_without_jax_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_import = builtins.__import__

    def no_jax(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "jax" or name.startswith("jax.") or name == "flax":
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jax)
    assert cli.main(["export", "mypkg.models:Transformer", "--input-shape", "1,8"]) == 2
    err = capsys.readouterr().err
    assert "No module named 'jax'" in err and "pip install jax flax" in err


def test_export_integer_inputs_say_to_pass_input_dtype(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("flax")
    (tmp_path / "tiny_lm.py").write_text(
        "from flax import linen as nn\n\n"
        "class LM(nn.Module):\n"
        "    @nn.compact\n"
        "    def __call__(self, ids):\n"
        "        return nn.Dense(3)(nn.Embed(11, 4)(ids))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["export", "tiny_lm:LM", "--input-shape", "1,5"]) == 2
    assert "pass --input-dtype int32" in capsys.readouterr().err
    assert cli.main(["export", "tiny_lm:LM", "--input-shape", "1,5", "--input-dtype", "int32"]) == 0
    assert "Embed_0.embedding" in capsys.readouterr().out  # the plan, on stdout
    assert cli.main(["export", "tiny_lm:Lm", "--input-shape", "1,5"]) == 2
    assert "Did you mean LM?" in capsys.readouterr().err
    assert cli.main(["export", "tiny_lmm:LM", "--input-shape", "1,5"]) == 2
    assert "cannot import 'tiny_lmm'" in capsys.readouterr().err
    sys.modules.pop("tiny_lm", None)


def test_wrote_line_words() -> None:
    assert cli._how(False, {"miss": 1}) == "streamed, made for this request"
    assert cli._how(True, {"hit": 1}) == "through shared memory, from the server's memory cache"
    assert cli._how(False, {}) == "streamed"
    assert cli._how(True, {"hit": 3, "miss": 2, "none": 1}) == (
        "through shared memory, 3 from the server's memory cache, 3 made for this request"
    )


def test_shared_memory_flag() -> None:
    parser = cli._parser()
    assert parser.parse_args(["list"]).shared_memory is None
    assert parser.parse_args(["--no-shared-memory", "list"]).shared_memory is False
    assert parser.parse_args(["--shared-memory", "list"]).shared_memory is True


def test_a_large_tensor_shows_its_bar_from_the_first_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before any byte arrives (the server still making it, or writing shared memory, where
    the bytes come all at once), the bar is there and its clock runs; it ends full."""
    bars: list[Any] = []
    opened = threading.Event()

    class Bar:
        def __init__(self, total: int, **_: Any) -> None:
            self.total, self.n, self.refreshed, self.closed = total, 0, 0, False
            bars.append(self)
            opened.set()

        def update(self, n: int) -> None:
            self.n += n

        def refresh(self) -> None:
            self.refreshed += 1

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(_client, "_tqdm", lambda: Bar)
    monkeypatch.setattr(_client, "PROGRESS_AFTER", 0.0)
    size = 64 * 2**20
    with jaxinit.Client("http://127.0.0.1:9") as client:
        with client._showing_progress(True, "normal", expected=size):
            assert opened.wait(30)  # no byte has come yet
        assert len(bars) == 1 and bars[0].total == size
        assert bars[0].n == size and bars[0].closed  # the answer came whole: the bar ends full
        small: list[Any] = []
        monkeypatch.setattr(_client, "_tqdm", lambda: lambda **kw: small.append(kw))
        with client._showing_progress(True, "zeros", expected=1024):
            pass
        assert not small  # a small tensor draws nothing
    request = jaxinit.Request("normal", 0, (4096, 4096), "bfloat16")
    assert _client._expected_bytes(request) == 4096 * 4096 * 2
