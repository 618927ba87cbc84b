"""A CA and a serving certificate kept in a Secret: what the admission webhook and the progress endpoint
each keep (two Secrets, one machinery).

`ensure_pki` (pure) decides what to keep and what to renew; `stored_pki` (shell) reads the Secret, writes
the renewed PKI back (a conflict means a peer renewed it first: read again) and returns it. The Secret is
the chart's, created empty, so neither Helm nor a GitOps tool ever holds or diffs the key; the operator
only gets and updates it by name (it creates it only when missing, for installs without the chart).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

from . import certs
from .constants import COMPONENT
from .kube import ApiError, Kube

log = logging.getLogger("axolotl_operator")

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"
WEBHOOK_CA_NAME = f"{COMPONENT}-webhook-ca"


def ensure_pki(
    stored: Mapping[str, bytes], hosts: list[str], now: datetime, ca_name: str = WEBHOOK_CA_NAME
) -> dict[str, bytes]:
    """The CA and serving certificate to use: the stored ones while valid, new ones where needed."""
    ca_cert, ca_key = stored.get(CA_CERT, b""), stored.get(CA_KEY, b"")
    if certs.needs_renewal(ca_cert, now) or not certs.pair_matches(ca_cert, ca_key):
        ca = certs.new_ca(ca_name, now)
    else:
        ca = certs.KeyPair(ca_cert, ca_key)
    tls_cert, tls_key = stored.get(TLS_CERT, b""), stored.get(TLS_KEY, b"")
    fresh = (
        not certs.needs_renewal(tls_cert, now)
        and certs.pair_matches(tls_cert, tls_key)
        and certs.covers(tls_cert, hosts)
        and certs.signed_by(tls_cert, ca.cert_pem)
    )
    serving = certs.KeyPair(tls_cert, tls_key) if fresh else certs.new_serving_cert(ca, hosts, now)
    return {CA_CERT: ca.cert_pem, CA_KEY: ca.key_pem, TLS_CERT: serving.cert_pem, TLS_KEY: serving.key_pem}


def stored_pki(
    kube: Kube, namespace: str, name: str, hosts: list[str], now: datetime, ca_name: str = WEBHOOK_CA_NAME
) -> dict[str, bytes]:
    """The PKI kept in Secret `namespace/name`, renewed there first when due."""
    path = f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}"
    for _attempt in range(3):
        secret = _get(kube, path)
        if secret is None:
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace},
            }
        stored = {k: _decoded(v) for k, v in (secret.get("data") or {}).items()}
        wanted = ensure_pki(stored, hosts, now, ca_name)
        if all(stored.get(k) == v for k, v in wanted.items()):
            return wanted
        secret["data"] = {k: base64.b64encode(v).decode() for k, v in wanted.items()}
        try:
            if secret["metadata"].get("resourceVersion"):
                kube.request("PUT", path, body=secret)
            else:
                kube.request("POST", path.rsplit("/", 1)[0], body=secret)
        except ApiError as exc:
            if exc.status in (409, 404):
                continue  # another replica renewed (or the Secret changed hands): read it again
            raise
        log.info("certificate for %s renewed in Secret %s/%s", hosts[0], namespace, name)
        return wanted
    raise RuntimeError(f"Secret {namespace}/{name} kept changing while its certificate was renewed")


def _get(kube: Kube, path: str) -> dict[str, Any] | None:
    try:
        return kube.request("GET", path)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def _decoded(value: Any) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        return b""  # garbage in the Secret: replaced like a missing entry
