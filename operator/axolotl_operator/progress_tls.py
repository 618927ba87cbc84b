"""HTTPS for the progress endpoint: its CA and serving certificate, and the CA trainer pods trust.

Why: every report carries a bearer token (a pod's projected ServiceAccount token); over plain HTTP anyone
on the pod network who sees one can replay it for an hour. So the endpoint serves TLS with a certificate
for the host of the progress URL (a DNS name or an IP address), signed by the operator's own CA, and the
CA certificate (never its key) reaches the trainer pods in each job's ConfigMap (`render`).

Where the PKI lives: in a cluster, the Secret `--progress-cert-secret NAMESPACE/NAME` (the chart's,
created empty; same machinery as the webhook's Secret, `pki_store`), so a restarted operator keeps its
CA and running jobs keep trusting it. A local run without a Secret makes a throw-away CA in memory.
It is checked every hour and renewed when a third of its life is left (the serving certificate yearly,
the CA after some 6.7 of its 10 years); the endpoint picks up a renewed certificate for the next
handshake, without a restart: each connection is handed the newest SSLContext (SNI callback, called for
every ClientHello). A new CA is handed to `on_ca` (the settings render uses), so jobs created from then
on trust it; a job created before keeps the old CA and loses live progress until its next attempt
(training is unaffected; the runner's final numbers still arrive with the pod's result).
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from .constants import COMPONENT
from .kube import Kube
from .pki_store import CA_CERT, TLS_CERT, TLS_KEY, ensure_pki, stored_pki

log = logging.getLogger("axolotl_operator")

CA_NAME = f"{COMPONENT}-progress-ca"
CHECK_SECONDS = 3600.0
RETRY_SECONDS = 10.0


def progress_hosts(progress_url: str) -> list[str]:
    """The name the trainer pods verify: the progress URL's host (brackets of an IPv6 address dropped)."""
    host = urlsplit(progress_url).hostname
    if not host:
        raise ValueError(f"the progress URL {progress_url!r} names no host")
    return [host]


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS 1.2+ server context with this certificate. OpenSSL loads keys from files only: they exist
    for the moment of loading, in a private directory, and are gone before this returns."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="axolotl-progress-") as directory:  # 0700
        cert, key = Path(directory) / TLS_CERT, Path(directory) / TLS_KEY
        cert.write_bytes(cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        context.load_cert_chain(cert, key)
    return context


class ProgressTls:
    """Keeps the endpoint's certificate current; `context` is what the server listens with."""

    def __init__(
        self,
        hosts: list[str],
        kube: Kube | None = None,
        secret: str = "",
        *,
        on_ca: Callable[[str], None] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.hosts = hosts
        self.kube = kube
        self.secret = secret_ref(secret) if secret else None
        self.on_ca = on_ca
        self.now = now
        self.ca_pem = b""
        self._pki: dict[str, bytes] = {}
        self._current: ssl.SSLContext | None = None
        self.context: ssl.SSLContext | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ssl.SSLContext:
        """The first certificate (or why there is none), then a thread that renews it."""
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="progress-certificates", daemon=True)
        self._thread.start()
        assert self.context is not None
        return self.context

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def refresh(self) -> None:
        """Renew what is due; a new serving certificate serves from the next handshake on."""
        if self.secret is not None:
            assert self.kube is not None, "a Secret needs the API"
            pki = stored_pki(self.kube, *self.secret, self.hosts, self.now(), CA_NAME)
        else:
            pki = ensure_pki(self._pki, self.hosts, self.now(), CA_NAME)
        if pki[TLS_CERT] != self._pki.get(TLS_CERT) or pki[TLS_KEY] != self._pki.get(TLS_KEY):
            current = server_context(pki[TLS_CERT], pki[TLS_KEY])
            if self.context is None:
                self.context = current
                self.context.sni_callback = self._pick
            self._current = current
        if pki[CA_CERT] != self.ca_pem:
            if self.ca_pem:
                log.warning("the progress CA changed: jobs created before report again from their next pod")
            self.ca_pem = pki[CA_CERT]
            if self.on_ca is not None:
                self.on_ca(self.ca_pem.decode())
        self._pki = pki

    def _pick(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self._current
        if current is not None and current is not context:
            connection.context = current

    def _loop(self) -> None:
        wait = CHECK_SECONDS
        while not self._stop.wait(wait):
            try:
                self.refresh()
                wait = CHECK_SECONDS
            except Exception as exc:  # retried soon; the current certificate still serves
                log.error("progress endpoint certificate: %s", exc)
                wait = RETRY_SECONDS


def secret_ref(value: str) -> tuple[str, str]:
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"--progress-cert-secret must be NAMESPACE/NAME, got {value!r}")
    return namespace, name
