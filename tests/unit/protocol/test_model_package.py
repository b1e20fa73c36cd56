"""The model language split by concern (jaxinit.protocol.model), its old module path kept
for one release, and the bars the split holds: one parser per module type, small modules."""

from __future__ import annotations

import pathlib

import pytest

from jaxinit.protocol import expansion, model
from jaxinit.protocol.errors import InvalidArgument
from jaxinit.protocol.model import language

PACKAGE = pathlib.Path(model.__file__).parent


def test_expansion_re_exports_the_model_package() -> None:
    assert expansion.__all__ == model.__all__
    for name in model.__all__:
        assert getattr(expansion, name) is getattr(model, name), name


def test_every_module_type_has_one_parser() -> None:
    assert set(language.MODULE_TYPES) == set(language._PARSERS)
    assert language.MODULE_TYPES[:3] == ("Dense", "DenseGeneral", "Conv")  # the leaf types first, as before


@pytest.mark.parametrize("path", sorted(PACKAGE.parent.rglob("*.py")), ids=lambda p: p.name)
def test_no_protocol_module_is_over_500_lines(path: pathlib.Path) -> None:
    assert len(path.read_text().splitlines()) <= 500


def test_a_placement_rule_reads_as_before() -> None:
    with pytest.raises(InvalidArgument, match="a Param belongs among the children of a Module"):
        model.expand({"type": "Sequential", "layers": [{"type": "Param", "shape": [1], "initializer": "zeros"}]})
    with pytest.raises(InvalidArgument, match="a Function .* belongs in a Sequential's layers"):
        model.expand({"type": "Module", "children": [{"type": "Function", "fn": "relu"}]})
    with pytest.raises(InvalidArgument, match="LoRA is an nnx module"):
        model.expand({"type": "LoRA", "in_features": 2, "lora_rank": 1, "out_features": 2})


def test_a_parameters_key_steps_are_its_prefix_then_its_fold_in() -> None:
    from jaxinit.protocol.keys import Key

    (kernel, *_) = model.expand(
        {"type": "Scan", "length": 3, "module": {"type": "Dense", "in_features": 2, "features": 2}}
    )
    assert kernel.key_steps == (("stack", 3), ("fold_in", kernel.fold_in))
    out = model.outputs([kernel])[0]
    assert out.key(Key(seed=1, fold_in=(7,))) == Key(seed=1, steps=(("fold_in", 7), *kernel.key_steps))


def test_the_raw_form_places_each_path_once() -> None:
    params = model.expand(
        {"params": [{"path": p, "initializer": "zeros", "shape": [1]} for p in ("a.w", "b.w", "a.v")]}
    )
    assert [p.name for p in params] == ["a.w", "a.v", "b.w"]  # module by module, as the tree holds them
    with pytest.raises(InvalidArgument, match="'w' is a parameter, not a module"):
        model.expand({"params": [{"path": p, "initializer": "zeros", "shape": [1]} for p in ("a.w", "a.w.x")]})
