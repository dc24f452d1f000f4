"""The HTTP/1.1 wire rules as plain tables (corsproxy.http.wire): framing, keep-alive, hop-by-hop
and what a request head may be. No sockets: the rules, one row each."""

from __future__ import annotations

import pytest

from corsproxy.http import wire
from corsproxy.http.wire import CHUNKED, NO_BODY, UNTIL_CLOSE, Body, Framing, Refusal

REQUEST_FRAMING = [
    pytest.param(None, None, NO_BODY, id="neither-header-no-body"),
    pytest.param(None, [b"0"], Framing(Body.LENGTH, 0), id="length-zero-kept"),
    pytest.param(None, [b"42"], Framing(Body.LENGTH, 42), id="length"),
    pytest.param([b"chunked"], None, CHUNKED, id="chunked"),
]


@pytest.mark.parametrize(("te", "cl", "expected"), REQUEST_FRAMING)
def test_request_framing_rfc9112_6_3(te, cl, expected):
    assert wire.request_framing(te, cl) == expected


RESPONSE_FRAMING = [
    pytest.param(200, False, None, [b"5"], Framing(Body.LENGTH, 5), id="length"),
    pytest.param(200, False, [b"chunked"], None, CHUNKED, id="chunked"),
    pytest.param(200, False, None, None, UNTIL_CLOSE, id="neither-read-until-close"),
    pytest.param(204, False, None, [b"7"], NO_BODY, id="204-never-has-a-body"),
    pytest.param(304, False, None, [b"7"], NO_BODY, id="304-never-has-a-body"),
    pytest.param(200, True, None, [b"1234"], Framing(Body.NONE, 1234), id="head-keeps-length"),
    pytest.param(200, True, [b"chunked"], None, NO_BODY, id="head-chunked-no-body"),
    pytest.param(101, False, None, None, NO_BODY, id="interim-no-body"),
]


@pytest.mark.parametrize(("status", "head_only", "te", "cl", "expected"), RESPONSE_FRAMING)
def test_response_framing_rfc9112_6_3(status, head_only, te, cl, expected):
    assert wire.response_framing(status, head_only, te, cl) == expected


RELAYED = [
    pytest.param(Framing(Body.LENGTH, 5), 200, "1.1", Framing(Body.LENGTH, 5), id="length-kept"),
    pytest.param(CHUNKED, 200, "1.1", CHUNKED, id="chunked-to-1.1"),
    pytest.param(UNTIL_CLOSE, 200, "1.1", CHUNKED, id="close-delimited-rechunked-for-1.1"),
    pytest.param(CHUNKED, 200, "1.0", UNTIL_CLOSE, id="chunked-to-1.0-until-close"),
    pytest.param(Framing(Body.LENGTH, 5), 204, "1.1", NO_BODY, id="204-no-framing-at-all"),
    pytest.param(Framing(Body.NONE, 9), 200, "1.1", Framing(Body.NONE, 9), id="head-length-kept"),
]


@pytest.mark.parametrize(("upstream", "status", "version", "expected"), RELAYED)
def test_relayed_framing_is_the_proxys_own(upstream, status, version, expected):
    assert wire.relayed_framing(upstream, status, version) == expected


HEADER_LINES = [
    pytest.param(Framing(Body.LENGTH, 0), b"Content-Length: 0\r\n", id="length-zero"),
    pytest.param(Framing(Body.LENGTH, 12), b"Content-Length: 12\r\n", id="length"),
    pytest.param(CHUNKED, b"Transfer-Encoding: chunked\r\n", id="chunked"),
    pytest.param(NO_BODY, b"", id="no-body-no-line"),
    pytest.param(UNTIL_CLOSE, b"", id="until-close-no-line"),
    pytest.param(Framing(Body.NONE, 9), b"Content-Length: 9\r\n", id="head-advertised-length"),
]


@pytest.mark.parametrize(("framing", "line"), HEADER_LINES)
def test_exactly_one_framing_line(framing, line):
    assert framing.header() == line


KEEP_ALIVE = [
    pytest.param("1.1", b"", True, id="1.1-default-persistent"),
    pytest.param("1.1", b"close", False, id="1.1-close"),
    pytest.param("1.1", b"keep-alive, Close", False, id="1.1-close-any-case-in-a-list"),
    pytest.param("1.0", b"", False, id="1.0-default-closes"),
    pytest.param("1.0", b"Keep-Alive", True, id="1.0-keep-alive"),
    pytest.param("1.0", b"keep-alive, close", False, id="1.0-close-wins"),
]


@pytest.mark.parametrize(("version", "connection", "expected"), KEEP_ALIVE)
def test_keep_alive_rfc9112_9_3(version, connection, expected):
    tokens = wire.connection_tokens([connection] if connection else [])
    assert wire.keep_alive(version, tokens) is expected


LISTED = [
    pytest.param(b"Content-Length", b"content-length", False, id="content-length-never-dropped"),
    pytest.param(b"close, Transfer-Encoding", b"transfer-encoding", True, id="te-always-hop"),
    pytest.param(b"Host", b"host", False, id="host-never-dropped"),
    pytest.param(b"X-Secret", b"x-secret", True, id="listed-name-dropped"),
    pytest.param(b"", b"keep-alive", True, id="keep-alive-always-hop"),
    pytest.param(b"", b"x-other", False, id="unlisted-name-kept"),
]


@pytest.mark.parametrize(("connection", "name", "dropped"), LISTED)
def test_connection_listed_names_never_touch_framing_or_host(connection, name, dropped):
    tokens = wire.connection_tokens([connection] if connection else [])
    assert (name in wire.hop_by_hop(tokens)) is dropped


REFUSALS = [
    pytest.param("GET", "1.1", 1, None, None, id="plain-get-passes"),
    pytest.param("GET", "1.0", 0, None, None, id="1.0-without-host-passes"),
    pytest.param("GET", "1.1", 0, None, 400, id="1.1-without-host-400"),
    pytest.param("GET", "1.1", 2, None, 400, id="two-hosts-400"),
    pytest.param("GET", "2.0", 1, None, 505, id="http-2.0-505"),
    pytest.param("GET", "0.9", 0, None, 400, id="http-0.9-400"),
    pytest.param("CONNECT", "1.1", 1, None, 405, id="connect-405"),
    pytest.param("TRACE", "1.1", 1, None, 405, id="trace-405"),
    pytest.param("POST", "1.1", 1, [b"chunked"], None, id="chunked-passes"),
    pytest.param("POST", "1.1", 1, [b"gzip, chunked"], 501, id="gzip-chunked-501"),
    pytest.param("POST", "1.1", 1, [b"gzip", b"chunked"], 501, id="gzip-then-chunked-lines-501"),
    pytest.param("POST", "1.1", 1, [b"identity"], 501, id="identity-501"),
    pytest.param("POST", "1.1", 1, [b"Chunked"], None, id="coding-names-are-case-insensitive"),
]


@pytest.mark.parametrize(("method", "version", "hosts", "te", "status"), REFUSALS)
def test_what_a_request_head_may_be(method, version, hosts, te, status):
    refusal = wire.refuse_request(method, version, hosts, te)
    assert (refusal.status if isinstance(refusal, Refusal) else None) == status


@pytest.mark.parametrize(
    ("name", "dropped"),
    [(b"transfer_encoding", True), (b"x_forwarded_host", True), (b"x-forwarded-host", False)],
)
def test_request_names_with_underscores_are_dropped(name, dropped):
    assert wire.dropped_request_field(name) is dropped
