"""The committed CRD is what the models generate, and it is a structural schema Kubernetes accepts."""

from __future__ import annotations

from typing import Any

import yaml
from axolotl_operator.crd import crd, crd_yaml
from conftest import REPO

CRD_FILE = REPO / "crds" / "axolotl.ai_axolotljobs.yaml"
FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "default", "additionalProperties: true"}


def _nodes(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


CHART_CRD_FILE = REPO / "charts" / "axolotl-operator" / "crds" / "axolotl.ai_axolotljobs.yaml"


def test_committed_crd_matches_the_models():
    generated = crd_yaml()
    assert CRD_FILE.read_text(encoding="utf-8") == generated, "run `make crd` and commit the result"
    assert CHART_CRD_FILE.read_text(encoding="utf-8") == generated, "run `make crd` and commit the result"


def test_schema_is_structural():
    for path, node in _nodes(_schema()):
        assert not FORBIDDEN & set(node), f"{path} has {FORBIDDEN & set(node)}"
        typed = (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, f"{path} has no type"
        if node.get("exclusiveMinimum") is not None:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_every_spec_and_status_field_is_described():
    schema = _schema()
    for root in ("spec", "status"):
        for path, node in _nodes(schema["properties"][root], root):
            if path.endswith(("[]", "{}")):
                continue
            assert node.get("description"), f"{path} has no description (kubectl explain would be empty)"


def test_constraints_live_in_the_schema():
    config = _schema()["properties"]["spec"]["properties"]["config"]
    assert config["x-kubernetes-preserve-unknown-fields"] is True  # other Axolotl keys pass through
    assert config["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    props = config["properties"]
    assert props["lora_r"]["minimum"] == 1 and props["lora_r"]["type"] == "integer"
    assert props["learning_rate"] == {**props["learning_rate"], "minimum": 0, "exclusiveMinimum": True}
    assert "adamw_hf" in props["optimizer"]["enum"]  # accepted, then translated by the operator
    assert "cosine" in props["lr_scheduler"]["enum"]
    assert props["datasets"]["items"]["required"] == ["path"]
    assert props["gpu_memory_limit"]["x-kubernetes-int-or-string"] is True
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["gpus"]["minimum"] == 0 and spec["nodes"]["minimum"] == 1
    assert spec["storage"]["properties"]["size"]["x-kubernetes-int-or-string"] is True


def test_names_columns_and_subresources():
    document = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    spec = document["spec"]
    assert spec["names"]["shortNames"] == ["axj"] and spec["names"]["categories"] == ["axolotl"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Progress", "Loss", "ETA", "Model", "Result", "Age"]
