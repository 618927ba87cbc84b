"""`axolotl-operator run`: configure Kopf (standalone, our annotations, timeouts) and run it until stopped.

Kopf's own bookkeeping goes into `axolotl.ai/*` annotations, never into .status (our structural status
schema would prune it) and never into spec; Kopf posts no Events of its own (ours say what happened).
SIGTERM/SIGINT stop Kopf gracefully: watches close and running handlers finish.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import socket
from typing import Any, cast

import kopf

from . import (
    handlers,
    metrics,
)
from .admission import LOCAL_CONFIGURATION
from .api.job import GROUP
from .controller import RESYNC_SECONDS, Operator
from .kube import Kube
from .progress_server import ProgressServer
from .progress_tls import ProgressTls, progress_hosts
from .settings import OperatorSettings
from .webhook import Webhook, WebhookOptions

FINALIZER = f"{GROUP}/finalizer"
WATCH_SERVER_TIMEOUT = 300  # the API server closes each watch after this; Kopf re-lists and resumes
WATCH_CLIENT_TIMEOUT = 330
CONNECT_TIMEOUT = 10
MAX_WORKERS = 16  # Kopf threads for synchronous handlers: only admission now (reconciles have their queue)


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    """Flags win over AXOLOTL_OPERATOR_* environment variables, which win over the defaults."""
    return OperatorSettings.from_env(
        default_image=getattr(args, "default_image", None),
        gpu_resource_name=getattr(args, "gpu_resource_name", None),
        default_storage_size=getattr(args, "default_storage_size", None),
        default_storage_class=getattr(args, "default_storage_class", None),
        progress_url=getattr(args, "progress_url", None),
    )


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: the operator has no Kopf change handlers (it reconciles by generation), so Kopf need
    not deep-copy every watched object on every event (`build`, about a fifth of its CPU at 1,000 jobs)
    nor keep the copy in an annotation."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure_kopf(
    settings: kopf.OperatorSettings,
    workers: int = MAX_WORKERS,
    webhook_server: kopf.WebhookServer | None = None,
) -> None:
    """Kopf settings shared by the CLI and embedded runs."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.enabled = False
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
    settings.watching.connect_timeout = CONNECT_TIMEOUT
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = CONNECT_TIMEOUT
    settings.execution.max_workers = workers
    settings.admission.server = webhook_server  # registration and certificates are webhook.py's, not Kopf's
    settings.admission.managed = None


def run_operator(args: argparse.Namespace) -> int:
    """Entry point of `axolotl-operator run`."""
    verbose = bool(getattr(args, "verbose", False))
    kopf.configure(verbose=verbose, log_prefix=True)  # "[namespace/name] ..." on per-object lines
    logging.getLogger("axolotl_operator").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:  # one "Handler ... succeeded" line per pod event is noise; failures still show
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # every liveness probe
    settings = settings_from_args(args)
    kube = Kube.from_environment()
    namespaces = list(getattr(args, "namespaces", None) or [])
    resync = float(getattr(args, "resync_seconds", RESYNC_SECONDS))
    webhook = start_webhook(args, kube, tuple(namespaces))  # first: bad webhook flags stop nothing started
    operator = Operator(settings, kube, namespaces=tuple(namespaces), resync_seconds=resync).start()
    metrics.serve(int(getattr(args, "metrics_port", 0) or 0))
    progress = start_progress_server(args, settings, operator, kube)

    @kopf.on.startup()
    def _startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
        configure_kopf(settings, webhook_server=webhook[1] if webhook else None)

    logging.getLogger("axolotl_operator").info(
        "starting: watching %s; trainer image %s; GPU resource %s",
        ", ".join(namespaces) if namespaces else "all namespaces",
        settings.default_image,
        settings.gpu_resource_name,
    )
    try:
        kopf.run(
            standalone=True,
            # Kopf would name itself after the user, and images run as a uid with no passwd entry.
            identity=f"axolotl-operator@{socket.gethostname()}",  # type: ignore[arg-type]
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=getattr(args, "liveness", None) or None,
            memo=kopf.Memo(operator=operator),  # the handlers' way to the Operator
        )
    finally:
        if webhook is not None:
            webhook[0].stop()
        if progress is not None:
            progress[0].stop()
            if progress[1] is not None:
                progress[1].stop()
        operator.stop()
    return 0


def start_webhook(
    args: argparse.Namespace, kube: Kube, namespaces: tuple[str, ...]
) -> tuple[Webhook, kopf.WebhookServer] | None:
    """The validating webhook (`--webhook-port`, 0 = off): certificates, registration, Kopf's server."""
    port = int(getattr(args, "webhook_port", 0) or 0)
    if not port:
        return None
    options = WebhookOptions(
        port=port,
        address=getattr(args, "webhook_address", None) or "127.0.0.1",
        configuration=getattr(args, "webhook_configuration", None) or LOCAL_CONFIGURATION,
        service=getattr(args, "webhook_service", "") or "",
        cert_secret=getattr(args, "webhook_cert_secret", "") or "",
        cert_dir=getattr(args, "webhook_cert_dir", "") or "",
        failure_policy=getattr(args, "webhook_failure_policy", None) or "Fail",
        # A glob cannot be a namespaceSelector: then the webhook sees every namespace (and judges alike).
        namespaces=() if any(c in n for n in namespaces for c in "*?[!, \t") else namespaces,
    )
    handlers.register_admission()
    webhook = Webhook(options, kube)
    return webhook, webhook.start()


def start_progress_server(
    args: argparse.Namespace, settings: OperatorSettings, operator: Operator, kube: Kube
) -> tuple[ProgressServer, ProgressTls | None] | None:
    """The endpoint trainer pods report to, in its own thread (`--progress-port`, 0 = off); over HTTPS
    when the progress URL is https (its CA then goes into the settings render uses, before Kopf runs)."""
    port = int(getattr(args, "progress_port", 0) or 0)
    if not port:
        return None
    if not settings.progress_url:
        logging.getLogger("axolotl_operator").warning(
            "--progress-port is set but no progress URL (AXOLOTL_OPERATOR_PROGRESS_URL): "
            "trainer pods will not report"
        )
    tls = None
    if settings.progress_url.startswith("https://"):

        def trust(ca: str) -> None:  # jobs rendered from now on mount this CA
            operator.settings = dataclasses.replace(operator.settings, progress_ca=ca)

        secret = getattr(args, "progress_cert_secret", "") or ""
        tls = ProgressTls(progress_hosts(settings.progress_url), kube, secret, on_ca=trust)
        tls.start()
    server = ProgressServer(
        operator.kube,
        settings.progress_audience,
        operator.accept_progress,
        getattr(args, "progress_host", None) or "0.0.0.0",
        port,
        ssl_context=tls.context if tls is not None else None,
    )
    server.start()
    return server, tls
