"""The webhook's certificates: made, kept while valid, renewed when due, and accepted by a real TLS client
that trusts only the CA bundle (as the API server does), over loopback."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from axolotl_operator import certs
from axolotl_operator.webhook import (
    CA_CERT,
    CA_KEY,
    TLS_CERT,
    TLS_KEY,
    WebhookOptions,
    _anonymous,
    _points_at,
    ensure_pki,
)

NOW = datetime(2026, 12, 2, tzinfo=UTC)
SERVICE_HOSTS = WebhookOptions(port=9443, service="ops/axolotl-operator-webhook").hosts()


def test_service_hosts_are_the_names_the_api_server_may_use():
    assert SERVICE_HOSTS[0] == "axolotl-operator-webhook.ops.svc"
    assert "axolotl-operator-webhook.ops.svc.cluster.local" in SERVICE_HOSTS
    assert WebhookOptions(port=1, address="127.0.0.1").hosts() == ["127.0.0.1"]


def test_a_new_pki_is_made_from_nothing_and_kept_while_valid():
    made = ensure_pki({}, SERVICE_HOSTS, NOW)
    assert set(made) == {CA_CERT, CA_KEY, TLS_CERT, TLS_KEY}
    assert certs.signed_by(made[TLS_CERT], made[CA_CERT])
    assert certs.covers(made[TLS_CERT], SERVICE_HOSTS)
    assert ensure_pki(made, SERVICE_HOSTS, NOW + timedelta(days=200)) == made


def test_the_serving_certificate_is_renewed_in_its_last_third_and_the_ca_kept():
    made = ensure_pki({}, SERVICE_HOSTS, NOW)
    later = NOW + timedelta(days=certs.SERVING_DAYS * 2 // 3 + 2)
    renewed = ensure_pki(made, SERVICE_HOSTS, later)
    assert renewed[CA_CERT] == made[CA_CERT]  # the caBundle the API server trusts stays put
    assert renewed[TLS_CERT] != made[TLS_CERT]
    assert not certs.needs_renewal(renewed[TLS_CERT], later)


def test_long_service_names_fit_a_certificate():
    hosts = WebhookOptions(port=1, service=f"{'n' * 63}/{'s' * 63}").hosts()  # the longest names allowed
    assert certs.covers(ensure_pki({}, hosts, NOW)[TLS_CERT], hosts)


def test_a_renamed_service_or_a_foreign_or_garbled_certificate_is_replaced():
    made = ensure_pki({}, SERVICE_HOSTS, NOW)
    other_hosts = WebhookOptions(port=1, service="other/hook").hosts()
    assert ensure_pki(made, other_hosts, NOW)[TLS_CERT] != made[TLS_CERT]
    foreign = ensure_pki({}, SERVICE_HOSTS, NOW)
    mixed = {**made, TLS_CERT: foreign[TLS_CERT], TLS_KEY: foreign[TLS_KEY]}
    assert certs.signed_by(ensure_pki(mixed, SERVICE_HOSTS, NOW)[TLS_CERT], made[CA_CERT])
    garbled = {**made, CA_CERT: b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"}
    fresh = ensure_pki(garbled, SERVICE_HOSTS, NOW)
    assert fresh[CA_CERT] != garbled[CA_CERT] and certs.signed_by(fresh[TLS_CERT], fresh[CA_CERT])


def tls_listener(pki: dict[str, bytes], directory: Path) -> tuple[socket.socket, threading.Thread]:
    """A loopback TLS server with the serving certificate that answers one connection with b"ok"."""
    (directory / "tls.crt").write_bytes(pki[TLS_CERT])
    (directory / "tls.key").write_bytes(pki[TLS_KEY])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        refused = contextlib.suppress(ssl.SSLError, OSError)  # a refused handshake ends here
        with refused, context.wrap_socket(connection, server_side=True) as tls:
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def handshake(pki: dict[str, bytes], listener: socket.socket, server_hostname: str) -> bytes:
    context = ssl.create_default_context(cadata=pki[CA_CERT].decode())  # trusts only our CA
    raw = socket.create_connection(listener.getsockname(), timeout=10)
    with raw, context.wrap_socket(raw, server_hostname=server_hostname) as tls:
        return tls.recv(2)


def test_a_client_trusting_only_the_ca_completes_a_handshake_by_service_name(tmp_path: Path):
    pki = ensure_pki({}, SERVICE_HOSTS, datetime.now(UTC))
    listener, thread = tls_listener(pki, tmp_path)
    with listener:
        assert handshake(pki, listener, SERVICE_HOSTS[0]) == b"ok"
        thread.join(timeout=10)


def test_a_client_refuses_the_certificate_for_another_name(tmp_path: Path):
    pki = ensure_pki({}, ["127.0.0.1"], datetime.now(UTC))
    listener, thread = tls_listener(pki, tmp_path)
    with listener, pytest.raises(ssl.SSLCertVerificationError):
        handshake(pki, listener, "evil.example")
    thread.join(timeout=10)


def test_mismatched_or_garbled_keys_are_replaced_not_served():
    made = ensure_pki({}, SERVICE_HOSTS, NOW)
    other = ensure_pki({}, SERVICE_HOSTS, NOW)
    wrong_key = {**made, TLS_KEY: other[TLS_KEY]}
    repaired = ensure_pki(wrong_key, SERVICE_HOSTS, NOW)
    assert certs.pair_matches(repaired[TLS_CERT], repaired[TLS_KEY]) and repaired[CA_CERT] == made[CA_CERT]
    wrong_ca_key = {**made, CA_KEY: other[CA_KEY]}
    fresh = ensure_pki(wrong_ca_key, SERVICE_HOSTS, NOW)
    assert fresh[CA_CERT] != made[CA_CERT] and certs.signed_by(fresh[TLS_CERT], fresh[CA_CERT])
    assert certs.pair_matches(fresh[CA_CERT], fresh[CA_KEY])
    assert not certs.pair_matches(made[TLS_CERT], b"not a key")


def test_options_refuse_what_cannot_work_and_bracket_ipv6():
    for options, words in (
        (WebhookOptions(port=1, address="0.0.0.0"), "--webhook-address 127.0.0.1"),
        (WebhookOptions(port=1, service="no-slash", cert_secret="s"), "NAMESPACE/NAME"),
        (WebhookOptions(port=1, service="ns/svc"), "--webhook-cert-secret"),
    ):
        with pytest.raises(ValueError, match=words):
            options.check()
    assert WebhookOptions(port=9443, address="::1").url() == "https://[::1]:9443/validate-axolotljob"
    WebhookOptions(port=1, service="ns/svc", cert_secret="s").check()


def test_reviews_reach_kopf_without_uids_and_odd_bodies_pass_through():
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "request-uid",
            "object": {"metadata": {"name": "a", "uid": ["hostile"]}, "spec": {}},
            "oldObject": {"metadata": {"name": "a", "uid": "u-1"}},
        },
    }
    cleaned = _anonymous(review)
    assert cleaned["request"]["uid"] == "request-uid"  # the review's own uid answers the API server
    assert cleaned["request"]["object"]["metadata"] == {"name": "a"}
    assert cleaned["request"]["oldObject"]["metadata"] == {"name": "a"}
    assert review["request"]["object"]["metadata"]["uid"] == ["hostile"]  # the input is not mutated
    for odd in ([], {"request": "x"}, {"request": {"object": "x"}}):
        assert _anonymous(odd) == odd


def test_only_our_own_local_registration_is_removed():
    url = "https://127.0.0.1:1/validate-axolotljob"
    ours = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "axolotl-operator"}},
            "webhooks": [{"clientConfig": {"url": url}}]}
    assert _points_at(ours, url)
    assert not _points_at(ours, "https://127.0.0.1:2/validate-axolotljob")  # another operator's now
    chart = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "Helm"}},
             "webhooks": [{"clientConfig": {"service": {"name": "x"}}}]}
    assert not _points_at(chart, url)
