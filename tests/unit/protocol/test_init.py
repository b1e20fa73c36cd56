"""The protocol package's face: one version for both distributions, and the shared names
re-exported from the modules that define them (``__all__`` itself is pinned in
tests/unit/client/test_api.py)."""

from __future__ import annotations

import re

import jaxinit
import jaxinit_server
from jaxinit import protocol
from jaxinit.protocol import catalog, codec, errors, keys, provenance


def test_one_version_for_client_and_server() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", protocol.__version__)
    assert jaxinit.__version__ == jaxinit_server.__version__ == protocol.__version__


def test_the_shared_names_are_the_modules_own() -> None:
    assert protocol.CATALOG is catalog.CATALOG and protocol.lookup is catalog.lookup
    assert protocol.bind_arguments is catalog.bind_arguments and protocol.InitializerSpec is catalog.InitializerSpec
    assert protocol.DTYPES is codec.DTYPES and protocol.DTYPE_NAMES is codec.DTYPE_NAMES
    assert protocol.ERROR_TABLE is errors.ERROR_TABLE and protocol.mapping_for is errors.mapping_for
    assert protocol.JaxinitError is errors.JaxinitError
    assert protocol.Key is keys.Key and protocol.KEY_IMPLS is keys.KEY_IMPLS
    assert protocol.DEFAULT_IMPL == keys.DEFAULT_IMPL == "threefry2x32"
    assert protocol.Provenance is provenance.Provenance
