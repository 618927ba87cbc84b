"""The admission webhook's shell: certificates, registration and rotation around Kopf's webhook server.

Two places, one verdict (`admission.review`):
- **in the cluster** (`--webhook-service NAMESPACE/NAME`, the Helm chart): the chart owns the
  ValidatingWebhookConfiguration and the Service; the operator keeps a CA and a serving certificate in
  one Secret (`--webhook-cert-secret`), renews them when a third of their life is left, and patches only
  the caBundle of its own configuration. With `--webhook-cert-dir` the certificates come from files
  (cert-manager's Secret mounted there) and the operator manages nothing: cert-manager injects the CA.
- **locally** (no service, `make demo`): a throw-away CA for the loopback address, and the operator
  registers the whole configuration (a URL on loopback, `axolotl-operator-local`) and removes it when it
  stops gracefully, if it is still the one it registered. A killed operator leaves it behind, which is
  what `failurePolicy: Fail` is for.

Kopf serves the HTTPS endpoint from files this module writes to a private directory; it re-reads them
every 30 s, so a renewed certificate is picked up without a restart. While a new CA takes over, the
caBundle holds both CAs, so the certificate still being served stays trusted.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import kopf

from . import certs
from .admission import LOCAL_CONFIGURATION, WEBHOOK_NAME, WEBHOOK_PATH, webhook_configuration
from .constants import COMPONENT
from .kube import ApiError, Kube
from .pki_store import CA_CERT, CA_KEY, TLS_CERT, TLS_KEY, ensure_pki, stored_pki

__all__ = ["CA_CERT", "CA_KEY", "TLS_CERT", "TLS_KEY", "Webhook", "WebhookOptions", "ensure_pki"]

log = logging.getLogger("axolotl_operator")

CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PREVIOUS_CA = "previous-ca.crt"  # kept in memory only, for one refresh
CHECK_SECONDS = 3600.0  # how often the certificates' expiry is checked
RETRY_SECONDS = 10.0  # after a failed renewal or registration
FILE_CHECK_SECONDS = 30.0  # how often Kopf's server looks for renewed files
UNSPECIFIED_ADDRESSES = {"0.0.0.0", "::", ""}


@dataclass(frozen=True)
class WebhookOptions:
    port: int
    address: str = "127.0.0.1"
    configuration: str = LOCAL_CONFIGURATION  # the ValidatingWebhookConfiguration's name
    service: str = ""  # NAMESPACE/NAME of the Service in front of the webhook; empty: a local run
    cert_secret: str = ""  # the Secret (in the Service's namespace) that keeps the CA and certificate
    cert_dir: str = ""  # or certificates from files: tls.crt, tls.key and (optional) ca.crt
    failure_policy: str = "Fail"  # of the local registration (the chart sets its own)
    namespaces: tuple[str, ...] = ()

    @property
    def local(self) -> bool:
        return not self.service

    def check(self) -> None:
        """Refuse options that cannot work, with the fix."""
        if self.local and self.address in UNSPECIFIED_ADDRESSES:
            raise ValueError(
                "a local webhook needs an address the API server can call (--webhook-address 127.0.0.1); "
                "in a cluster, name the Service with --webhook-service NAMESPACE/NAME"
            )
        if not self.local:
            self.service_ref()
            if not self.cert_secret and not self.cert_dir:
                raise ValueError("--webhook-service needs --webhook-cert-secret (or --webhook-cert-dir)")

    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.port}{WEBHOOK_PATH}"

    def service_ref(self) -> tuple[str, str]:
        namespace, _, name = self.service.partition("/")
        if not namespace or not name:
            raise ValueError(f"--webhook-service must be NAMESPACE/NAME, got {self.service!r}")
        return namespace, name

    def hosts(self) -> list[str]:
        """The names the API server may call the webhook by: the Service's DNS names, or the address."""
        if self.local:
            return [self.address]
        namespace, name = self.service_ref()
        return [
            f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.cluster.local",
            f"{name}.{namespace}",
            name,
        ]


class Webhook:
    """Keeps the webhook's certificates and registration current; hands Kopf its server."""

    def __init__(
        self, options: WebhookOptions, kube: Kube, now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.options = options
        self.kube = kube
        self.now = now
        self.directory = Path(tempfile.mkdtemp(prefix="axolotl-webhook-"))  # 0700: the key stays private
        self.ca_bundle = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pki: dict[str, bytes] = {}
        self._listening = threading.Event()
        self._wake = threading.Event()  # a failed registration asks for an early retry
        self._failed = False

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> kopf.WebhookServer:
        """Certificates ready, registration done; returns the server for Kopf's settings.admission."""
        try:
            self.options.check()
            self.refresh()
        except BaseException:
            self._remove_files()
            raise
        self._thread = threading.Thread(target=self._loop, name="webhook-certificates", daemon=True)
        self._thread.start()
        options = self.options
        return _Server(
            self._on_listening,
            addr=options.address,
            port=options.port,
            host=options.hosts()[0],
            cadata=self.ca_bundle or None,
            certfile=str(self._file(TLS_CERT)),
            pkeyfile=str(self._file(TLS_KEY)),
            file_check_interval=FILE_CHECK_SECONDS,
        )

    def _on_listening(self) -> None:
        """Register only once the endpoint answers, so a starting operator never refuses an apply."""
        self._listening.set()
        try:
            self._publish()
        except Exception as exc:  # not fatal: the loop retries soon; until then the API server cannot call us
            self._failed = True
            self._wake.set()
            log.error("webhook registration: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.options.local and self._listening.is_set():
            self._unregister()
        self._remove_files()

    def _remove_files(self) -> None:
        for path in self.directory.iterdir():
            path.unlink(missing_ok=True)
        self.directory.rmdir()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(RETRY_SECONDS if self._failed else CHECK_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
                self._failed = False
            except Exception as exc:  # retried soon; the current certificate still serves
                self._failed = True
                log.error("webhook certificates or registration: %s", exc)

    # ---------------------------------------------------------------- certificates

    def refresh(self) -> None:
        """Renew what needs renewing, write the files Kopf serves, and publish the CA bundle."""
        options = self.options
        if options.cert_dir:
            directory = Path(options.cert_dir)
            self._pki = {k: (directory / k).read_bytes() for k in (TLS_CERT, TLS_KEY)}
            ca_file = directory / CA_CERT
            self._pki[CA_CERT] = ca_file.read_bytes() if ca_file.exists() else b""
        elif options.local:
            self._pki = self._pki or ensure_pki({}, options.hosts(), self.now())
        else:
            previous_ca = self._pki.get(CA_CERT, b"")
            self._pki = self._stored_pki()
            renewed = previous_ca and previous_ca != self._pki[CA_CERT]
            if renewed and certs.still_valid(previous_ca, self.now()):
                self._pki[PREVIOUS_CA] = previous_ca  # until the renewed files are served
        self._write(TLS_CERT, self._pki[TLS_CERT])
        self._write(TLS_KEY, self._pki[TLS_KEY])
        self.ca_bundle = self._pki[CA_CERT] + self._pki.get(PREVIOUS_CA, b"")
        if self._listening.is_set():
            self._publish()

    def _publish(self) -> None:
        """Tell the API server where the webhook is and which CA to trust (cert-manager's job, with it)."""
        if self.options.cert_dir and not self.options.local:
            return
        if self.options.local:
            self._register()
        else:
            self._patch_ca_bundle()

    def _file(self, key: str) -> Path:
        return Path(self.options.cert_dir) / key if self.options.cert_dir else self.directory / key

    def _write(self, key: str, data: bytes) -> None:
        if self.options.cert_dir:
            return
        target = self._file(key)
        if target.exists() and target.read_bytes() == data:
            return
        temporary = target.with_name(f".{target.name}.new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        temporary.replace(target)  # Kopf never reads half a file

    def _stored_pki(self) -> dict[str, bytes]:
        """The PKI kept in the Secret, renewed there first when due (a conflict means a peer won: reuse)."""
        namespace, _ = self.options.service_ref()
        return stored_pki(self.kube, namespace, self.options.cert_secret, self.options.hosts(), self.now())

    # ---------------------------------------------------------------- registration

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.kube.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _client_config(self) -> dict[str, Any]:
        return {"url": self.options.url(), "caBundle": base64.b64encode(self.ca_bundle).decode()}

    def _register(self) -> None:
        options = self.options
        body = webhook_configuration(
            options.configuration,
            self._client_config(),
            options.failure_policy,
            options.namespaces,
            labels={"app.kubernetes.io/managed-by": COMPONENT},
        )
        path = f"{CONFIGURATIONS}/{quote(options.configuration)}"
        self.kube.request(
            "PATCH",
            path,
            body=body,
            content_type=APPLY_PATCH,
            query={"fieldManager": COMPONENT, "force": "true"},
        )
        log.info("webhook registered: %s -> %s", options.configuration, self._client_config()["url"])

    def _unregister(self) -> None:
        try:
            self.kube.request("DELETE", f"{CONFIGURATIONS}/{quote(self.options.configuration)}")
        except ApiError as exc:
            if exc.status != 404:
                log.warning(
                    "could not remove the webhook configuration %s: %s", self.options.configuration, exc
                )

    def _patch_ca_bundle(self) -> None:
        """Set the caBundle of our entry in the chart's configuration (RBAC: get and patch on that name)."""
        path = f"{CONFIGURATIONS}/{quote(self.options.configuration)}"
        configuration = self._get(path)
        if configuration is None:
            raise RuntimeError(
                f"ValidatingWebhookConfiguration {self.options.configuration} not found: the chart creates it"
            )
        bundle = base64.b64encode(self.ca_bundle).decode()
        patch: list[dict[str, Any]] = []
        for index, webhook in enumerate(configuration.get("webhooks") or []):
            if (
                webhook.get("name") == WEBHOOK_NAME
                and webhook.get("clientConfig", {}).get("caBundle") != bundle
            ):
                patch.append({"op": "test", "path": f"/webhooks/{index}/name", "value": WEBHOOK_NAME})
                patch.append(
                    {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle}
                )
        if patch:
            self.kube.request("PATCH", path, body=patch, content_type=JSON_PATCH)
            log.info("webhook CA bundle set on %s", self.options.configuration)


def _points_at(configuration: Mapping[str, Any], url: str) -> bool:
    labels = (configuration.get("metadata") or {}).get("labels") or {}
    urls = {(w.get("clientConfig") or {}).get("url") for w in configuration.get("webhooks") or []}
    return labels.get("app.kubernetes.io/managed-by") == COMPONENT and urls == {url}


def _anonymous(request: Any) -> Any:
    """The review without the objects' uids: Kopf keeps a memo per uid it is shown (for ever, unless the
    object is later deleted), so forged reviews with made-up uids would grow the operator's memory; a
    hostile uid (a list) would crash its lookup. The verdict does not use the uid."""
    if not isinstance(request, dict) or not isinstance(request.get("request"), dict):
        return request
    payload = dict(request["request"])
    for key in ("object", "oldObject"):
        body = payload.get(key)
        if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
            payload[key] = {**body, "metadata": {k: v for k, v in body["metadata"].items() if k != "uid"}}
    return {**request, "request": payload}


class _Server(kopf.WebhookServer):
    """Kopf's webhook server, telling us (in a thread: the calls block) each time it starts listening, and
    handing Kopf reviews without uids."""

    def __init__(self, on_listening: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_listening = on_listening

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        async def judge(request: Any, **kwargs: Any) -> Any:
            return await fn(_anonymous(request), **kwargs)

        async for client_config in super().__call__(judge):
            await asyncio.to_thread(self._on_listening)
            yield client_config
