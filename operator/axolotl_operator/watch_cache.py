"""What the watches last delivered: AxolotlJobs, their Jobs and pods, so a status sync reads memory
instead of asking the API server three times (GET AxolotlJob, GET Job, LIST pods) on every event.

Kopf fills it through index handlers, which it runs for every object before any other handler, and it
invokes no handler until every indexed kind has been listed in full. So once a handler has run
(`mark_ready`), the pods kept for a Job are all the watches know. A missing AxolotlJob or Job is still
asked for (a Job created a moment ago may not have been delivered yet), and so is everything before then.

Objects are kept without `managedFields` and kubectl's last-applied annotation (most of their weight,
never read). A newer object never gives way to an older one: the status writer stores what its own
writes returned, and the watch may deliver an older version of that object afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .constants import CONTROLLER_UID_LABEL
from .kube import KubeApi, Obj

Key = tuple[str, str]  # (namespace, name)
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def slim(obj: Mapping[str, Any]) -> Obj:
    """The object without what only the API server's bookkeeping reads."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**obj, "metadata": meta}


def _version(obj: Mapping[str, Any]) -> int | None:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


def _older(new: Mapping[str, Any], kept: Mapping[str, Any] | None) -> bool:
    """`new` is an older version of the same object than `kept`. resourceVersions are opaque to
    clients, but every API server backed by etcd makes them increasing integers; anything else is
    taken as newer (the last delivery wins)."""
    if kept is None or (kept.get("metadata") or {}).get("uid") != (new.get("metadata") or {}).get("uid"):
        return False
    new_version, kept_version = _version(new), _version(kept)
    return new_version is not None and kept_version is not None and new_version < kept_version


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return str(meta.get("namespace") or ""), str(meta["name"])


class WatchCache:
    """Thread-safe: Kopf's handler threads write, the status workers read."""

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube
        self._lock = threading.Lock()
        self._ready = False
        self._axolotljobs: dict[Key, Obj] = {}
        self._jobs: dict[Key, Obj] = {}
        self._pods: dict[tuple[str, str], dict[str, Obj]] = {}  # (namespace, Job uid) -> name -> pod

    def mark_ready(self) -> None:
        """Every watched kind has been listed (a Kopf handler runs only then)."""
        self._ready = True

    # ---------------------------------------------------------------- what the watches deliver

    def put_axolotljob(self, obj: Mapping[str, Any]) -> None:
        self._put(self._axolotljobs, _key(obj), obj)

    def put_job(self, obj: Mapping[str, Any]) -> None:
        self._put(self._jobs, _key(obj), obj)

    def put_pod(self, obj: Mapping[str, Any]) -> None:
        owner = ((obj.get("metadata") or {}).get("labels") or {}).get(CONTROLLER_UID_LABEL)
        if not owner:
            return
        namespace, name = _key(obj)
        with self._lock:
            pods = self._pods.setdefault((namespace, owner), {})
            if not _older(obj, pods.get(name)):
                pods[name] = slim(obj)

    def drop_axolotljob(self, obj: Mapping[str, Any]) -> None:
        self._drop(self._axolotljobs, _key(obj), obj)

    def drop_job(self, obj: Mapping[str, Any]) -> None:
        self._drop(self._jobs, _key(obj), obj)

    def drop_pod(self, obj: Mapping[str, Any]) -> None:
        owner = ((obj.get("metadata") or {}).get("labels") or {}).get(CONTROLLER_UID_LABEL)
        namespace, name = _key(obj)
        with self._lock:
            pods = self._pods.get((namespace, str(owner)))
            if pods is not None:
                pods.pop(name, None)
                if not pods:
                    del self._pods[(namespace, str(owner))]

    def forget_axolotljob(self, key: Key) -> None:
        """The AxolotlJob is gone though no DELETED event said so (a watch relisted meanwhile)."""
        with self._lock:
            self._axolotljobs.pop(key, None)

    def prune_pods(self) -> int:
        """Drop the pods of Jobs no longer kept (their DELETED events were missed); how many groups."""
        with self._lock:
            jobs = {(ns, (job.get("metadata") or {}).get("uid")) for (ns, _), job in self._jobs.items()}
            orphans = [group for group in self._pods if group not in jobs]
            for group in orphans:
                del self._pods[group]
        return len(orphans)

    def _put(self, table: dict[Key, Obj], key: Key, obj: Mapping[str, Any]) -> None:
        with self._lock:
            if not _older(obj, table.get(key)):
                table[key] = slim(obj)

    def _drop(self, table: dict[Key, Obj], key: Key, obj: Mapping[str, Any]) -> None:
        uid = (obj.get("metadata") or {}).get("uid")
        with self._lock:
            kept = table.get(key)
            if kept is not None and (kept.get("metadata") or {}).get("uid") == uid:
                del table[key]

    # ---------------------------------------------------------------- what a status sync reads

    def get_axolotljob(self, namespace: str, name: str) -> Obj | None:
        kept = self._kept(self._axolotljobs, (namespace, name))
        return kept if kept is not None else self.kube.get_axolotljob(namespace, name)

    def get_job(self, namespace: str, name: str) -> Obj | None:
        kept = self._kept(self._jobs, (namespace, name))
        return kept if kept is not None else self.kube.get_job(namespace, name)

    def _kept(self, table: dict[Key, Obj], key: Key) -> Obj | None:
        """The kept object, once the watches feed the cache (before, only the API server knows)."""
        if not self._ready:
            return None
        with self._lock:
            return table.get(key)

    def job_pods(self, namespace: str, job_uid: str, fresh: bool = False) -> list[Obj]:
        """The Job's pods; `fresh`: from the API server even when the watches feed the cache."""
        if fresh or not self._ready:
            return self.kube.list_pods(namespace, f"{CONTROLLER_UID_LABEL}={job_uid}")
        with self._lock:
            return list((self._pods.get((namespace, job_uid)) or {}).values())

    def sizes(self) -> dict[str, int]:
        """How many objects are kept, per kind (for metrics and tests)."""
        with self._lock:
            pods = sum(len(p) for p in self._pods.values())
            return {"axolotljobs": len(self._axolotljobs), "jobs": len(self._jobs), "pods": pods}
