"""Test harness for gs:// paths: a local GCS emulator that both TensorFlow and google-cloud-storage reach.

TensorFlow's GCS filesystem has no endpoint override; it always talks HTTPS to www.googleapis.com and
storage.googleapis.com. So one child process runs two servers on 127.0.0.1:

- gcp-storage-emulator (in memory), which google-cloud-storage reaches directly via STORAGE_EMULATOR_HOST;
- a TLS-terminating HTTPS proxy. TF's libcurl honours `https_proxy` and sends `CONNECT <google host>:443`;
  the proxy answers with a certificate for that host signed by a throwaway CA (`CURL_CA_BUNDLE` makes TF
  trust it), reads the decrypted requests, de-chunks request bodies (TF uploads with
  `Transfer-Encoding: chunked`), forwards them to the emulator and rewrites the emulator's `http://`
  resumable-upload `Location` back to `https://` so TF keeps using the tunnel.

The child exits when its stdin closes, so it dies with the test process even if that is killed.
Run as a script only by `run_gcs_emulator` (it is the child's entry point).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import http.client
import http.server
import json
import logging
import os
import re
import selectors
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
STARTUP_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 5.0
_UPSTREAM_TIMEOUT_S = 60.0
_IDLE_TIMEOUT_S = 60.0
_STORAGE_LAYOUT = re.compile(r"^/storage/v1/b/(?P<bucket>[^/?]+)/storageLayout(?:\?.*)?$")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)


@dataclass(frozen=True)
class GcsEmulator:
    """Where a running emulator listens, and the files a client needs to trust its proxy."""

    emulator_url: str  # plain HTTP, for google-cloud-storage
    proxy_url: str  # HTTPS proxy, for TensorFlow
    ca_bundle: str  # PEM of the CA that signed the proxy's certificate
    log_path: str  # the child's stderr: proxy traffic and emulator errors


# TF builds its gs:// filesystem when `import tensorflow` registers it and reads these then, once per
# process: they only take effect if set before TensorFlow is imported. They make a failing request fail in
# about a second instead of after TF's default 10 retries with backoff up to 32 s (about 3 minutes).
TF_IMPORT_TIME_ENV = {
    "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
    "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "100000",
    "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "500000",
}


def gcs_environ(emulator: GcsEmulator) -> dict[str, str]:
    """Env vars that send TF's gs:// traffic and google-cloud-storage to `emulator`.

    TF (libcurl) reads all of these per request, so they may be set after TensorFlow is imported.
    """
    return {
        "https_proxy": emulator.proxy_url,
        "HTTPS_PROXY": emulator.proxy_url,
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
        "CURL_CA_BUNDLE": emulator.ca_bundle,
        # TF sends this as its bearer token, so it never looks for credential files or a metadata server.
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
        "NO_GCE_CHECK": "true",
        "STORAGE_EMULATOR_HOST": emulator.emulator_url,
    }


@contextlib.contextmanager
def patched_environ(env: Mapping[str, str]) -> Iterator[None]:
    """Set `env` in os.environ for the duration, then restore every touched variable."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def storage_client(emulator: GcsEmulator) -> Any:
    """A google-cloud-storage Client bound to `emulator`, whatever the environment says."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="tfwhale-test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator.emulator_url},
    )


def create_bucket(emulator: GcsEmulator, name: str | None = None) -> str:
    """Create a bucket (a fresh random name by default) and return it as "gs://<name>"."""
    name = name or f"tfwhale-test-{uuid.uuid4().hex[:12]}"
    storage_client(emulator).create_bucket(name)
    return f"gs://{name}"


# ---- certificates -------------------------------------------------------------------------------------


def write_test_certificates(directory: str, hosts: tuple[str, ...] = GOOGLE_HOSTS) -> tuple[str, str, str]:
    """A throwaway CA and a leaf certificate for `hosts`; returns (ca.pem, leaf.pem, leaf-key.pem) paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(ca_key, ca_key, subject="tfwhale test CA", hosts=())
    leaf_cert = _certificate(leaf_key, ca_key, subject=hosts[0], hosts=hosts)
    pem = serialization.Encoding.PEM
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    paths = tuple(os.path.join(directory, name) for name in ("ca.pem", "leaf.pem", "leaf-key.pem"))
    contents = (ca_cert.public_bytes(pem), leaf_cert.public_bytes(pem), key_pem)
    for path, data in zip(paths, contents, strict=True):
        with open(path, "wb") as f:
            f.write(data)
    return paths  # type: ignore[return-value]


def _certificate(key: Any, ca_key: Any, subject: str, hosts: tuple[str, ...]) -> Any:
    """The CA's self-signed certificate when `hosts` is empty, else a server certificate for `hosts`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    is_ca = not hosts
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tfwhale test CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
        .add_extension(_key_usage(x509, cert_sign=is_ca), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(host) for host in hosts]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _key_usage(x509: Any, cert_sign: bool) -> Any:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# ---- parent side: start, wait, stop ----------------------------------------------------------------------


@contextlib.contextmanager
def run_gcs_emulator(startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[GcsEmulator]:
    """Run emulator + proxy in a child process for the duration of the block; never leaves it behind."""
    with tempfile.TemporaryDirectory(prefix="tfwhale-gcs-") as tmp:
        ca_path, cert_path, key_path = write_test_certificates(tmp)
        log_path = os.path.join(tmp, "server.log")
        command = [sys.executable, os.path.abspath(__file__), "--cert", cert_path, "--key", key_path]
        with open(log_path, "wb") as log:
            child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        try:
            ports = _read_ports(child, startup_timeout_s, log_path)
            yield GcsEmulator(
                emulator_url=f"http://127.0.0.1:{ports['emulator']}",
                proxy_url=f"http://127.0.0.1:{ports['proxy']}",
                ca_bundle=ca_path,
                log_path=log_path,
            )
        finally:
            _stop_child(child)


def _read_ports(child: subprocess.Popen, timeout_s: float, log_path: str) -> dict[str, int]:
    """The child's one-line JSON announcement of its ports, or a clear error after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    received = b""
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        while b"\n" not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise RuntimeError(
                    f"GCS emulator did not start within {timeout_s:g} s; its log:\n{_tail(log_path)}"
                )
            chunk = os.read(child.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(
                    f"GCS emulator exited during start-up (code {child.wait(_STOP_TIMEOUT_S)}); "
                    f"its log:\n{_tail(log_path)}"
                )
            received += chunk
    return json.loads(received.split(b"\n", 1)[0])


def _stop_child(child: subprocess.Popen) -> None:
    """Close stdin (the child's stop signal), then escalate to SIGTERM and SIGKILL if it lingers."""
    for stream in (child.stdin, child.stdout):
        with contextlib.suppress(OSError):
            stream.close()
    for escalate in (lambda: None, child.terminate, child.kill):
        escalate()
        try:
            child.wait(_STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            continue
    logger.error("GCS emulator child %d did not exit", child.pid)


def _tail(path: str, max_chars: int = 4000) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")[-max_chars:]


# ---- child side: the TLS-terminating proxy -----------------------------------------------------------------


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls_context: ssl.SSLContext, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _TunnelHandler)
        self.tls_context = tls_context
        self.upstream_port = upstream_port


class _TunnelHandler(http.server.BaseHTTPRequestHandler):
    """Accepts CONNECT to a Google host, then serves the decrypted HTTP/1.1 requests inside the tunnel."""

    protocol_version = "HTTP/1.1"
    timeout = _IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # else each small response waits ~40 ms for a delayed ACK
    server: _ProxyServer
    tunnel_host = ""

    def do_CONNECT(self) -> None:
        host, _, port = self.path.rpartition(":")
        if host not in GOOGLE_HOSTS or port != "443":
            self.send_error(403, f"this proxy only tunnels to {', '.join(GOOGLE_HOSTS)}:443")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        try:
            tls = self.server.tls_context.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError) as err:
            logger.warning("TLS handshake for %s failed: %s", host, err)
            self.close_connection = True
            return
        self.connection = tls
        self.rfile = tls.makefile("rb")
        self.wfile = tls.makefile("wb")
        self.tunnel_host = host

    def handle_expect_100(self) -> bool:
        # Our wfile is buffered: without a flush libcurl waits 1 s before sending each upload body.
        accepted = super().handle_expect_100()
        self.wfile.flush()
        return accepted

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.close()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _forward logs one line per request with more detail

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        logger.info(format, *args)

    def _forward(self) -> None:
        if not self.tunnel_host:
            self.send_error(400, "plain-HTTP proxying is not supported; use CONNECT")
            return
        path, body = self.path, self._read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if not body and "uploadType=media" in path:
            # TF creates directory markers as empty media uploads, which the emulator crashes on.
            path, body, headers["Content-Type"] = _as_multipart_upload(path)
        layout_of = _STORAGE_LAYOUT.match(path)
        if layout_of:
            # TF asks for a bucket's storageLayout before renaming a folder; the emulator lacks it.
            path = f"/storage/v1/b/{layout_of['bucket']}"
        try:
            response, payload = self._call_emulator(path, body, headers)
        except (OSError, http.client.HTTPException) as err:
            logger.error("%s %s%s -> emulator failed: %r", self.command, self.tunnel_host, self.path, err)
            self.send_error(502, f"emulator failed: {err!r}")
            return
        if layout_of and response.status == 200:
            payload = _flat_storage_layout(json.loads(payload))
        logger.info(
            "%s https://%s%s [%d B] -> %d [%d B]",
            self.command, self.tunnel_host, self.path, len(body), response.status, len(payload),
        )  # fmt: skip
        self._reply(response, payload)

    def _call_emulator(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[http.client.HTTPResponse, bytes]:
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(
            "127.0.0.1", self.server.upstream_port, timeout=_UPSTREAM_TIMEOUT_S
        )
        try:
            upstream.request(self.command, path, body=body, headers=headers)
            response = upstream.getresponse()
            return response, response.read()
        finally:
            upstream.close()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return _read_chunked(self.rfile)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, response: http.client.HTTPResponse, payload: bytes) -> None:
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() in _HOP_BY_HOP:
                continue
            if name.lower() == "location" and value.startswith("http://"):
                # The emulator builds upload URLs from the Host header but knows only plain HTTP.
                value = "https://" + value[len("http://") :]
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def _flat_storage_layout(bucket: dict[str, Any]) -> bytes:
    """The storageLayout of a bucket without hierarchical namespace, as real GCS describes it."""
    layout = {
        "kind": "storage#storageLayout",
        "bucket": bucket["name"],
        "location": bucket.get("location", "US"),
        "locationType": bucket.get("locationType", "multi-region"),
    }
    return json.dumps(layout).encode()


def _as_multipart_upload(path: str) -> tuple[str, bytes, str]:
    """An empty `uploadType=media` request rewritten as the equivalent multipart upload."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    metadata = json.dumps({"name": query["name"][0]})
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n"
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n\r\n--{boundary}--\r\n"
    )
    path = path.replace("uploadType=media", "uploadType=multipart")
    return path, body.encode(), f"multipart/related; boundary={boundary}"


def _read_chunked(rfile: Any) -> bytes:
    parts = []
    while True:
        size = int(rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        parts.append(rfile.read(size))
        rfile.readline(1024)  # the CRLF after each chunk
    while rfile.readline(1024).strip():
        pass  # trailer headers, if any, up to the blank line
    return b"".join(parts)


def _serve_until_stdin_closes(cert_path: str, key_path: str) -> None:
    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    class EmulatorHandler(RequestHandler):
        disable_nagle_algorithm = True

    storage = Storage(use_memory_fs=True)
    # Single-threaded on purpose: the emulator's storage is not thread-safe.
    emulator = http.server.HTTPServer(("127.0.0.1", 0), functools.partial(EmulatorHandler, storage))
    tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_context.load_cert_chain(cert_path, key_path)
    proxy = _ProxyServer(tls_context, emulator.server_port)
    servers = (emulator, proxy)
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    print(json.dumps({"emulator": emulator.server_port, "proxy": proxy.server_address[1]}), flush=True)
    sys.stdin.buffer.read()  # EOF when the parent closes the pipe or dies
    for server in servers:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)  # the proxy logs each request
    _serve_until_stdin_closes(args.cert, args.key)


if __name__ == "__main__":
    main()
