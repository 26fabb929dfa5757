"""Classification: behaviours a mutation run of the classify group showed no other test pinned down.

Which header containers are taken as they are, and the edges of the
readers the classifier and the rate limiter share.
"""

from __future__ import annotations

import email
import http.client
from types import MappingProxyType

import pytest

from techrevati.runtime._wait_hints import _headers_of


def _http_message(text: str) -> http.client.HTTPMessage:
    message = email.message_from_string(text, _class=http.client.HTTPMessage)
    assert isinstance(message, http.client.HTTPMessage)
    return message


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "2"},
        MappingProxyType({"retry-after": "2"}),
        _http_message("Retry-After: 2\r\n\r\n"),
    ],
    ids=["dict", "mapping", "http-message"],
)
def test_a_header_container_is_its_own_headers(headers: object) -> None:
    assert _headers_of(headers) is headers
