"""The GET form's reserved query names are the key's and the named request options that
KServe's parameters share (core.request.OPTION_PARAMETERS): one set, not two lists."""

from jaxinit_server.core.request import OPTION_PARAMETERS
from jaxinit_server.rest.routes.generate import RESERVED


def test_the_get_forms_reserved_names_are_the_key_and_the_request_options() -> None:
    assert {"shape", "seed", "key_data", "key_fold_in", *OPTION_PARAMETERS} == RESERVED
