"""The local control plane behaves like a real cluster: CRDs, scheduling by GPU capacity,
volumes, garbage collection, RBAC and bound tokens are Kubernetes' own."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "axolotl.ai_axolotljobs.yaml"

# Used only while crds/ has no AxolotlJob CRD yet.
TEST_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.kubeenv.test}
spec:
  group: kubeenv.test
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: Desired state of the widget.
            properties:
              size:
                type: integer
                description: How many sprockets the widget carries.
"""


def job(name: str, gpus: int = 1, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A one-pod Job asking for ``gpus`` nvidia.com/gpu."""
    container: dict[str, Any] = {"name": "main", "image": "busybox"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == type_), None)


def phase_is(get: Callable[[], dict[str, Any]], phase: str) -> Callable[[], dict[str, Any] | None]:
    """A wait_for predicate: the object once its status.phase is ``phase``."""
    return lambda: (lambda o: o if o.get("status", {}).get("phase") == phase else None)(get())


@pytest.fixture
def job_pods(kubectl_json):
    def pods(namespace: str, name: str) -> list[dict[str, Any]]:
        return kubectl_json("get", "pods", "-n", namespace, "-l", f"job-name={name}")["items"]

    return pods


def test_nodes_have_gpus_and_loopback_addresses(kubectl_json):
    nodes = kubectl_json("get", "nodes")["items"]
    assert len(nodes) >= 1
    for node in nodes:
        assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) > 0
        assert condition(node, "Ready")["status"] == "True"
        for addr in node["status"]["addresses"]:
            if addr["type"] == "InternalIP":
                assert ipaddress.ip_address(addr["address"]) in LOOPBACK
        assert not node["spec"].get("taints")


def test_every_node_heartbeats_through_a_lease(kubectl_json):
    # Without heartbeats the node-lifecycle controller would taint the nodes unreachable.
    items = kubectl_json("get", "leases", "-n", "kube-node-lease")["items"]
    leases = {lease["metadata"]["name"]: lease for lease in items}
    for node in kubectl_json("get", "nodes")["items"]:
        lease = leases[node["metadata"]["name"]]
        assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
        assert lease["spec"]["renewTime"]


def test_crd_established_and_explained(kubectl, apply_yaml, wait_condition, wait_for):
    docs = [d for d in yaml.safe_load_all(CRD_FILE.read_text() if CRD_FILE.exists() else TEST_CRD) if d]
    crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    apply_yaml(crd)
    wait_condition(f"crd/{crd['metadata']['name']}", "Established")
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    spec_props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    field, schema = next((k, v) for k, v in spec_props.items() if v.get("description"))
    plural = crd["spec"]["names"]["plural"]

    def explained() -> str:
        api_version = f"{crd['spec']['group']}/{version['name']}"
        return kubectl("explain", f"{plural}.spec.{field}", f"--api-version={api_version}")

    # The OpenAPI of a new CRD is published asynchronously: retry until the text shows up.
    first_words = " ".join(schema["description"].split()[:4])
    out = wait_for(lambda: (lambda o: o if first_words in " ".join(o.split()) else "")(explained()),
                   what=f"kubectl explain showing {first_words!r}")
    assert field.upper() in out.upper()


def test_gpu_job_is_scheduled_and_completes(namespace, apply_yaml, wait_condition, job_pods):
    apply_yaml(job("one-gpu", gpus=1), namespace)
    wait_condition("job/one-gpu", "Complete", namespace)
    (pod,) = job_pods(namespace, "one-gpu")
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert ipaddress.ip_address(pod["status"]["podIP"]) in LOOPBACK


def test_too_many_gpus_stays_pending_with_failed_scheduling(namespace, apply_yaml, wait_for, kubectl_json,
                                                           job_pods):
    nodes = kubectl_json("get", "nodes")["items"]
    most = max(int(n["status"]["allocatable"]["nvidia.com/gpu"]) for n in nodes)
    apply_yaml(job("too-big", gpus=most + 1), namespace)

    def failed_scheduling() -> list[dict[str, Any]]:
        events = kubectl_json("get", "events", "-n", namespace, "--field-selector", "reason=FailedScheduling")
        return [e for e in events["items"] if "nvidia.com/gpu" in e.get("message", "")]

    events = wait_for(failed_scheduling, timeout=60, what="FailedScheduling event naming nvidia.com/gpu")
    assert "Insufficient nvidia.com/gpu" in events[0]["message"]
    (pod,) = job_pods(namespace, "too-big")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")
    assert condition(pod, "PodScheduled")["reason"] == "Unschedulable"


def test_pod_with_claim_schedules_once_bound(namespace, apply_yaml, wait_for, kubectl_json):
    apply_yaml(
        [
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
             "spec": {"containers": [{"name": "main", "image": "busybox",
                                      "volumeMounts": [{"name": "data", "mountPath": "/workspace/data"}]}],
                      "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}},
        ],
        namespace,
    )
    pod = wait_for(phase_is(lambda: kubectl_json("get", "pod/user", "-n", namespace), "Running"),
                   timeout=90, what="pod using the claim Running")
    pvc = kubectl_json("get", "pvc/data", "-n", namespace)
    assert pvc["spec"]["storageClassName"] == "standard"  # the default class
    assert pvc["status"]["phase"] == "Bound"
    pv = kubectl_json("get", "pv", pvc["spec"]["volumeName"])
    assert pv["spec"]["claimRef"]["uid"] == pvc["metadata"]["uid"]
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [pod["spec"]["nodeName"]]
    assert Path(pv["spec"]["hostPath"]["path"]).is_dir()


def test_immediate_class_binds_without_consumer(namespace, apply_yaml, wait_for, kubectl_json):
    apply_yaml({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "now"},
                "spec": {"storageClassName": "standard-immediate", "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "2Gi"}}}}, namespace)
    pvc = wait_for(phase_is(lambda: kubectl_json("get", "pvc/now", "-n", namespace), "Bound"),
                   what="claim Bound")
    assert pvc["status"]["capacity"]["storage"] == "2Gi"


def test_deleting_owner_deletes_dependents(namespace, apply_yaml, wait_for, kubectl, job_pods):
    (owner,) = apply_yaml({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}, namespace)
    apply_yaml({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "dependent",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                             "uid": owner["metadata"]["uid"]}]}}, namespace)
    apply_yaml(job("held", gpus=0, annotations={"kwok.axolotl.ai/hold": "true"}), namespace)
    wait_for(lambda: [p for p in job_pods(namespace, "held") if p["status"].get("phase") == "Running"],
             what="held job pod Running")

    kubectl("delete", "configmap/owner", "job/held", "-n", namespace, "--cascade=background")
    wait_for(lambda: not kubectl("get", "configmap", "dependent", "-n", namespace, "--ignore-not-found"),
             what="dependent ConfigMap garbage-collected")
    wait_for(lambda: not job_pods(namespace, "held"), what="job pods garbage-collected")


def test_rbac_denies_serviceaccount_without_role(namespace, wait_for, kubectl):
    kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = kubectl("create", "token", "nobody", "-n", namespace).strip()
    with pytest.raises(subprocess.CalledProcessError) as denied:
        kubectl("get", "pods", "-n", namespace, f"--token={token}")
    assert "Forbidden" in denied.value.stderr
    assert f"system:serviceaccount:{namespace}:nobody" in denied.value.stderr

    kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    kubectl("create", "rolebinding", "nobody-reads", "--role=pod-reader",
            f"--serviceaccount={namespace}:nobody", "-n", namespace)
    # RBAC's authorizer learns the binding from its informers: wait until it answers "yes" for the token
    # (`auth can-i` prints "no" and exits 1 while denied), then the request itself must succeed.
    wait_for(lambda: kubectl("auth", "can-i", "list", "pods", "-n", namespace, f"--token={token}",
                             check=False).strip() == "yes",
             what="granted access")
    listed = json.loads(kubectl("get", "pods", "-n", namespace, f"--token={token}", "-o", "json"))
    assert listed["items"] == []  # the namespace has no pods; the list itself was allowed
    with pytest.raises(subprocess.CalledProcessError) as still_denied:
        kubectl("get", "secrets", "-n", namespace, f"--token={token}")
    assert "Forbidden" in still_denied.value.stderr


def test_bound_token_passes_review_only_for_its_audience(namespace, apply_yaml, kubectl, wait_for):
    def token_review(token: str, audience: str) -> dict[str, Any]:
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token, "audiences": [audience]}}
        return json.loads(kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review)))["status"]

    kubectl("create", "serviceaccount", "trainer", "-n", namespace)
    apply_yaml({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bound-to"},
                "spec": {"serviceAccountName": "trainer",
                         "containers": [{"name": "main", "image": "busybox"}]}}, namespace)
    audience = f"axolotl-operator-{uuid.uuid4().hex[:6]}"
    token = kubectl("create", "token", "trainer", "-n", namespace, "--bound-object-kind=Pod",
                    "--bound-object-name=bound-to", f"--audience={audience}").strip()

    ok = token_review(token, audience)
    assert ok["authenticated"] is True
    assert ok["audiences"] == [audience]
    assert ok["user"]["username"] == f"system:serviceaccount:{namespace}:trainer"
    assert ok["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["bound-to"]

    wrong = token_review(token, "someone-else")
    assert not wrong.get("authenticated")

    # The token dies with the pod it is bound to (once the authenticator's cache expires).
    kubectl("delete", "pod", "bound-to", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(lambda: not token_review(token, audience).get("authenticated"), timeout=90, interval=1,
             what="bound token rejected after its pod is gone")


def test_helm_installs_and_uninstalls_a_chart(namespace, helm, kubectl, kubectl_json, tmp_path):
    chart = tmp_path / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )

    def run(*args: str) -> str:
        return subprocess.run(["helm", *args], capture_output=True, text=True, check=True).stdout

    run("install", "demo", str(chart), "-n", namespace, "--set", "greeting=hi", "--wait", "--timeout=60s")
    assert kubectl_json("get", "configmap", "demo-cm", "-n", namespace)["data"]["greeting"] == "hi"
    releases = json.loads(run("list", "-n", namespace, "-o", "json"))
    assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]
    run("uninstall", "demo", "-n", namespace, "--wait")
    assert not kubectl("get", "configmap", "demo-cm", "-n", namespace, "--ignore-not-found")


def test_control_plane_listens_on_loopback_only(kubeconfig, listening_addresses):
    pid = int((kubeconfig.parent / "pid").read_text())
    addresses = listening_addresses(pid)
    assert len(addresses) >= 3  # etcd client + peer, kube-apiserver
    assert all(a.is_loopback for a in addresses), addresses


def test_kubelet_traffic_goes_to_the_loopback_node_address(namespace, apply_yaml, kubectl, kubectl_json,
                                                          wait_for):
    apply_yaml({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]}}, namespace)
    pod = wait_for(phase_is(lambda: kubectl_json("get", "pod/web", "-n", namespace), "Running"),
                   what="pod Running")
    with pytest.raises(subprocess.CalledProcessError) as logs:
        kubectl("logs", "web", "-n", namespace, "--request-timeout=20s")
    # No kubelet API is served, but the attempt targets the node's loopback InternalIP and
    # never resolves the node name through DNS.
    assert f"dial tcp {pod['status']['hostIP']}:" in logs.value.stderr
    assert ipaddress.ip_address(pod["status"]["hostIP"]) in LOOPBACK
    assert "lookup" not in logs.value.stderr
