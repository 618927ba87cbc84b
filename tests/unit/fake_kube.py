"""An in-memory stand-in for the operator's `KubeApi`, for unit tests of the shell.

It keeps objects by (apiVersion, kind, namespace, name), answers create with 409 when the name is taken,
lists pods by one `key=value` label selector, merges patches, and applies status per field manager the
way server-side apply does at the top level of .status (a manager's keys it no longer sends are removed;
other managers' keys stay). `fail(method, status, times)` makes the next calls answer an API error.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Mapping
from typing import Any

from axolotl_operator.kube import ApiError

Obj = dict[str, Any]
AXJ = ("axolotl.ai/v1alpha1", "AxolotlJob")


def merge(base: Obj, patch: Mapping[str, Any]) -> Obj:
    """RFC 7386 JSON merge patch."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], Obj] = {}
        self.owners: dict[tuple[str, str, str], set[str]] = {}  # (namespace, name, manager) -> status keys
        self.events: list[tuple[str, str, str]] = []
        self.calls: list[str] = []
        self.applies: list[tuple[str, str, Obj]] = []  # (name, manager, status)
        self.reviews: dict[str, Obj] = {}
        self._failures: dict[str, list[int]] = {}
        self._uids = itertools.count(1)
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- test controls

    def put(self, obj: Obj) -> Obj:
        """Store an object as if another client created it (uid and resourceVersion filled in)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta["resourceVersion"] = str(next(self._uids))
        with self._lock:
            self.objects[self._key(obj)] = obj
        return copy.deepcopy(obj)

    def find(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        with self._lock:
            obj = self.objects.get((api_version, kind, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Also KubeApi.delete: gone already is fine; a `uid` precondition that does not match is a 409."""
        with self._lock:
            key = (api_version, kind, namespace, name)
            if uid and key in self.objects and self.objects[key]["metadata"].get("uid") != uid:
                raise ApiError(409, "Conflict", {"message": "Precondition failed: UID in precondition"})
            self.objects.pop(key, None)

    def fail(self, method: str, status: int, times: int = 1) -> None:
        """The next `times` calls of `method` answer HTTP `status`."""
        with self._lock:
            self._failures.setdefault(method, []).extend([status] * times)

    def _call(self, method: str) -> None:
        with self._lock:
            self.calls.append(method)
            pending = self._failures.get(method)
            if pending:
                status = pending.pop(0)
                raise ApiError(status, "Injected", {"message": f"injected {status} on {method}"})

    @staticmethod
    def _key(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
        meta = obj["metadata"]
        return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]

    # ---------------------------------------------------------------- KubeApi

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        self._call("get")
        return self.find(api_version, kind, namespace, name)

    def replace(self, manifest: Mapping[str, Any]) -> Obj:
        self._call("replace")
        with self._lock:
            key = self._key(manifest)
            existing = self.objects.get(key)
            if existing is None:
                raise ApiError(404, "Not Found", {"message": "not found"})
            version = manifest["metadata"].get("resourceVersion")
            if version != existing["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", {"message": "the object has been modified"})
            obj = copy.deepcopy(dict(manifest))
            obj["metadata"]["uid"] = existing["metadata"]["uid"]
            obj["metadata"]["resourceVersion"] = str(next(self._uids))
            self.objects[key] = obj
            return copy.deepcopy(obj)

    def get_axolotljob(self, namespace: str, name: str) -> Obj | None:
        self._call("get_axolotljob")
        return self.find(*AXJ, namespace, name)

    def get_job(self, namespace: str, name: str) -> Obj | None:
        self._call("get_job")
        return self.find("batch/v1", "Job", namespace, name)

    def get_pod(self, namespace: str, name: str) -> Obj | None:
        self._call("get_pod")
        return self.find("v1", "Pod", namespace, name)

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]:
        self._call("list")
        return self._select(api_version, kind, namespace, selector)

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        self._call("list_pods")
        return self._select("v1", "Pod", namespace, selector)

    def _select(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]:
        wanted = dict(term.partition("=")[::2] for term in selector.split(","))
        with self._lock:
            return [
                copy.deepcopy(obj)
                for (api, k, ns, _), obj in self.objects.items()
                if (api, k, ns) == (api_version, kind, namespace)
                and wanted.items() <= (obj["metadata"].get("labels") or {}).items()
            ]

    def list_axolotljob_keys(self, namespace: str | None) -> list[tuple[str, str]]:
        self._call("list_axolotljob_keys")
        with self._lock:
            return [
                (ns, name)
                for (api, kind, ns, name) in self.objects
                if (api, kind) == AXJ and namespace in (None, ns)
            ]

    def create(self, manifest: Mapping[str, Any]) -> tuple[Obj, bool]:
        self._call("create")
        with self._lock:
            existing = self.objects.get(self._key(manifest))
            if existing is not None:
                return copy.deepcopy(existing), False
            return self.put(dict(manifest)), True

    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any], sub: str = ""
    ) -> Obj:
        self._call("merge_patch")
        with self._lock:
            key = (api_version, kind, namespace, name)
            if key not in self.objects:
                raise ApiError(404, "Not Found", {"message": "not found"})
            self.objects[key] = merge(self.objects[key], patch)
            return copy.deepcopy(self.objects[key])

    def apply_status(self, namespace: str, name: str, status: Mapping[str, Any], field_manager: str) -> Obj:
        self._call("apply_status")
        with self._lock:
            key = (*AXJ, namespace, name)
            if key not in self.objects:
                raise ApiError(404, "Not Found", {"message": "not found"})
            obj = self.objects[key]
            current = dict(obj.get("status") or {})
            owned = self.owners.get((namespace, name, field_manager), set())
            for gone in owned - set(status):
                current.pop(gone, None)
            current.update(copy.deepcopy(dict(status)))
            self.owners[(namespace, name, field_manager)] = set(status)
            obj["status"] = current
            obj["metadata"]["resourceVersion"] = str(next(self._uids))
            self.applies.append((name, field_manager, copy.deepcopy(dict(status))))
            return copy.deepcopy(obj)

    def event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self._call("event")
        with self._lock:
            self.events.append((owner["metadata"]["name"], type_, str(reason)))

    def token_review(self, token: str, audiences: list[str]) -> Obj:
        self._call("token_review")
        return copy.deepcopy(self.reviews.get(token, {"authenticated": False}))
