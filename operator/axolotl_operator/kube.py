"""A small JSON client for the few Kubernetes calls the operator makes.

Why not the generated typed client: the operator works with plain manifests (what `render` returns)
and plain dicts (what `status` reads), needs exact patch content types (merge patch, server-side
apply with field managers), and runs the calls from worker threads; the kubernetes package's
configuration, authentication (incl. rotating in-cluster tokens) and connection pool are reused as they
are. `KubeApi` is the surface the operator uses, so its unit tests run against an in-memory fake.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from kubernetes import client, config

from .api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION
from .constants import COMPONENT
from .trainer_contract import utc_now

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (a JSON body is valid YAML)
PARTIAL_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
REQUEST_TIMEOUT = (10, 60)  # connect, read (seconds)
EVENT_MESSAGE_LIMIT = 1024

# apiVersion/kind -> (API prefix, plural, namespaced)
KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "PersistentVolumeClaim"): ("/api/v1", "persistentvolumeclaims"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "Pod"): ("/api/v1", "pods"),
    ("v1", "Event"): ("/api/v1", "events"),
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs"),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("kueue.x-k8s.io/v1beta2", "Workload"): ("/apis/kueue.x-k8s.io/v1beta2", "workloads"),
    (API_VERSION, KIND): (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


REJECTED_STATUSES = frozenset({400, 404, 422})  # the request itself is wrong: retrying cannot help


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, reason: str, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, Mapping) else str(body)[:500]
        super().__init__(f"{status} {reason}: {message}")


def path_of(api_version: str, kind: str, namespace: str, name: str | None = None, sub: str = "") -> str:
    prefix, plural = KINDS[(api_version, kind)]
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


class KubeApi(Protocol):
    """The API calls the operator makes (the real `Kube`, or a fake in unit tests)."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None: ...
    def get_axolotljob(self, namespace: str, name: str) -> Obj | None: ...
    def get_job(self, namespace: str, name: str) -> Obj | None: ...
    def get_pod(self, namespace: str, name: str) -> Obj | None: ...
    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]: ...
    def list_pods(self, namespace: str, selector: str) -> list[Obj]: ...
    def list_axolotljob_keys(self, namespace: str | None) -> list[tuple[str, str]]: ...
    def create(self, manifest: Mapping[str, Any]) -> tuple[Obj, bool]: ...
    def replace(self, manifest: Mapping[str, Any]) -> Obj: ...
    def delete(
        self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None
    ) -> None: ...
    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any], sub: str = ""
    ) -> Obj: ...
    def apply_status(
        self, namespace: str, name: str, status: Mapping[str, Any], field_manager: str
    ) -> Obj: ...
    def event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...
    def token_review(self, token: str, audiences: list[str]) -> Obj: ...


class Kube:
    """Thread-safe: one urllib3 pool shared by Kopf's handler threads and the status workers."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        if api_client is None:
            configuration = client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = 32
            api_client = client.ApiClient(configuration)
        self.api = api_client

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config."""
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
        return cls()

    # ---------------------------------------------------------------- raw

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
        accept: str = "application/json",
    ) -> Obj:
        if query:
            path += "?" + urlencode(query)
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        _, url, headers, _, _ = self.api.param_serialize(
            method, path, header_params=headers, auth_settings=["BearerToken"]
        )
        response = self.api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=REQUEST_TIMEOUT
        )
        data = response.read()
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = data.decode(errors="replace") if isinstance(data, bytes) else data
        if not 200 <= response.status < 300:
            raise ApiError(response.status, response.reason or "", parsed)
        return parsed

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.request("GET", path_of(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    # ---------------------------------------------------------------- typed helpers

    def get_axolotljob(self, namespace: str, name: str) -> Obj | None:
        return self.get(API_VERSION, KIND, namespace, name)

    def get_job(self, namespace: str, name: str) -> Obj | None:
        return self.get("batch/v1", "Job", namespace, name)

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]:
        path = path_of(api_version, kind, namespace)
        return list(self.request("GET", path, query={"labelSelector": selector}).get("items") or [])

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        return self.list("v1", "Pod", namespace, selector)

    def get_pod(self, namespace: str, name: str) -> Obj | None:
        return self.get("v1", "Pod", namespace, name)

    def list_axolotljob_keys(self, namespace: str | None) -> list[tuple[str, str]]:
        """(namespace, name) of every AxolotlJob (in `namespace`, or cluster-wide): metadata only, so a
        resync costs one small request whatever the configs weigh."""
        prefix, plural = KINDS[(API_VERSION, KIND)]
        path = f"{prefix}/namespaces/{quote(namespace)}/{plural}" if namespace else f"{prefix}/{plural}"
        listed = self.request("GET", path, accept=PARTIAL_METADATA_LIST)
        return [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed.get("items") or []]

    def token_review(self, token: str, audiences: list[str]) -> Obj:
        """Ask the API server who a bearer token belongs to (TokenReview status; the token is never
        logged or kept)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        }
        review = self.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=body)
        return dict(review.get("status") or {})

    def create(self, manifest: Mapping[str, Any]) -> tuple[Obj, bool]:
        """Create a child; (object, True) if made now, (existing object, False) on 409 AlreadyExists."""
        meta = manifest["metadata"]
        path = path_of(manifest["apiVersion"], manifest["kind"], meta["namespace"])
        try:
            return self.request("POST", path, body=manifest), True
        except ApiError as exc:
            if exc.status != 409:
                raise
        existing = self.get(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        if existing is None:  # deleted between our POST and GET: try once more
            return self.request("POST", path, body=manifest), True
        return existing, False

    def replace(self, manifest: Mapping[str, Any]) -> Obj:
        """PUT: the object becomes `manifest` (its metadata.resourceVersion guards against lost updates)."""
        meta = manifest["metadata"]
        path = path_of(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        return self.request("PUT", path, body=dict(manifest))

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete (its dependents in the background, by the garbage collector); gone already is fine.
        With `uid`, only that object: a namesake made since it was read is left alone (409)."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            self.request("DELETE", path_of(api_version, kind, namespace, name), body=body)
        except ApiError as exc:
            if exc.status != 404:
                raise

    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any], sub: str = ""
    ) -> Obj:
        path = path_of(api_version, kind, namespace, name, sub)
        return self.request("PATCH", path, body=dict(patch), content_type=MERGE_PATCH)

    def apply_status(self, namespace: str, name: str, status: Mapping[str, Any], field_manager: str) -> Obj:
        """Server-side apply of the AxolotlJob's .status as `field_manager`: the fields given are set and
        owned, the fields this manager owned and left out are removed, other managers' fields are kept.
        `force`: the operator is the status' only rightful writer, so it takes over a conflicting field."""
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": dict(status),
        }
        return self.request(
            "PATCH",
            path_of(API_VERSION, KIND, namespace, name, "status"),
            body=json.dumps(body),
            content_type=APPLY_PATCH,
            query={"fieldManager": field_manager, "force": "true"},
        )

    def event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record a core/v1 Event on the AxolotlJob (what `kubectl describe axj` shows)."""
        meta = owner["metadata"]
        stamp = utc_now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": owner.get("apiVersion", API_VERSION),
                "kind": owner.get("kind", KIND),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason[:128],
            "message": message[:EVENT_MESSAGE_LIMIT],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self.request("POST", path_of("v1", "Event", meta["namespace"]), body=event)
