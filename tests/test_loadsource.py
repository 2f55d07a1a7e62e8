"""Load readings from an HTTP endpoint on loopback."""

from __future__ import annotations

import http.server
import threading

import pytest

from fastredir.loadsource import LoadError, read_http, read_vici


@pytest.fixture
def http_endpoint():
    bodies: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server calls
            body = bodies.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def test_http_reading(http_endpoint):
    base, bodies = http_endpoint
    bodies["/load"] = b'{"ike_sas": 42, "gateway": {"sas": {"established": 7}}}'
    assert read_http(f"{base}/load", "ike_sas", timeout=2) == 42
    assert read_http(f"{base}/load", "gateway.sas.established", timeout=2) == 7


@pytest.mark.parametrize(
    "body, field, problem",
    [
        (b"not json", "ike_sas", "no number at 'ike_sas'"),
        (b'{"other": 1}', "ike_sas", "no number at 'ike_sas'"),
        (b'{"ike_sas": "many"}', "ike_sas", "not a count of IKE SAs"),
        (b'{"ike_sas": -3}', "ike_sas", "not a count of IKE SAs"),
        (b'{"ike_sas": true}', "ike_sas", "not a count of IKE SAs"),
        (b"[1, 2]", "ike_sas", "no number at 'ike_sas'"),
    ],
)
def test_http_bad_answers(http_endpoint, body, field, problem):
    base, bodies = http_endpoint
    bodies["/load"] = body
    with pytest.raises(LoadError, match=problem):
        read_http(f"{base}/load", field, timeout=2)


def test_http_not_found(http_endpoint):
    base, _ = http_endpoint
    with pytest.raises(LoadError, match="404"):
        read_http(f"{base}/missing", "ike_sas", timeout=2)


def test_vici_socket_missing(tmp_path):
    with pytest.raises(LoadError, match="VICI unix://"):
        read_vici(f"unix://{tmp_path}/charon.vici", timeout=1)
