"""Generate the AxolotlJob CRD from the pydantic models, so the schema has one source of truth.

pydantic emits JSON Schema 2020-12; Kubernetes wants a structural OpenAPI v3 subset: no `$ref`, `nullable`
instead of `anyOf` with null, `x-kubernetes-int-or-string` for int|string, and a type on every node.
"""

from __future__ import annotations

from typing import Any

from .api.job import (
    CATEGORIES,
    GROUP,
    KIND,
    MAX_NAME_LENGTH,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    AxolotlJobSpec,
)
from .api.status import AxolotlJobStatus
from .yamlio import dump

Schema = dict[str, Any]

KEPT_KEYWORDS = (
    "description",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "enum",
    "format",
    "maxItems",
    "maxLength",
    "maximum",
    "minItems",
    "minLength",
    "minimum",
    "pattern",
    "type",
    "x-kubernetes-preserve-unknown-fields",
)
PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Progress",
        "type": "integer",
        "jsonPath": ".status.progress.percent",
        "description": "Percent done",
    },
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {
        "name": "ETA",
        "type": "integer",
        "jsonPath": ".status.progress.etaSeconds",
        "description": "Seconds left",
    },
    {"name": "Model", "type": "string", "jsonPath": ".spec.config.base_model"},
    {
        "name": "Result",
        "type": "string",
        "jsonPath": ".status.outputs.result",
        "description": "Where the trained model is",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
IMMUTABLE_CONFIG_RULE = {
    "rule": "self == oldSelf",
    "message": "spec.config is immutable: create a new AxolotlJob to train with another configuration",
}
NAME_LENGTH_RULE = {
    "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
    "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters (child objects append suffixes)",
}


def structural(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """Convert one pydantic JSON-schema node (and its children) to a structural OpenAPI node."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if "anyOf" in schema:
        return _union(schema, defs)
    if "const" in schema:
        schema = {**schema, "enum": [schema["const"]]}
    out: Schema = {k: schema[k] for k in KEPT_KEYWORDS if k in schema}
    _exclusive_bounds(schema, out)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        out["type"] = "object"
        properties = schema.get("properties", {})
        if properties:
            out["properties"] = {name: structural(child, defs) for name, child in properties.items()}
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict) and additional:
            out["additionalProperties"] = structural(additional, defs)
        elif not properties or additional is True:
            out["x-kubernetes-preserve-unknown-fields"] = True
        if schema.get("required"):
            out["required"] = list(schema["required"])
    elif kind == "array":
        out["items"] = structural(schema.get("items", {}), defs)
    elif "type" not in out and "enum" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True  # Any
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    return out


def _union(schema: Schema, defs: dict[str, Schema]) -> Schema:
    options = [o for o in schema["anyOf"] if o.get("type") != "null"]
    nullable = len(options) < len(schema["anyOf"])
    outer = {k: v for k, v in schema.items() if k not in ("anyOf", "default", "title")}
    if len(options) == 1:
        node = structural({**options[0], **outer}, defs)
    else:
        converted = [structural(o, defs) for o in options]
        types = {c.get("type") for c in converted}
        if types == {"integer", "string"} and all("enum" not in c for c in converted):
            node = {"x-kubernetes-int-or-string": True}  # the string's pattern is checked by the operator
        elif types <= {"integer", "number"}:
            node = {"type": "number"}
            for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                values = [c[keyword] for c in converted if keyword in c]
                if values:
                    node[keyword] = values[0]
        else:  # e.g. bool | "auto", str | list[str]: keep the value as written, typed by the description
            node = {"x-kubernetes-preserve-unknown-fields": True}
        node.update({k: v for k, v in structural(outer, defs).items() if k in ("description",)})
    if nullable:
        node["nullable"] = True
    return node


def _exclusive_bounds(schema: Schema, out: Schema) -> None:
    """JSON Schema's numeric exclusive bounds -> OpenAPI v3.0's boolean flags."""
    if "exclusiveMinimum" in schema:
        out["minimum"] = schema["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    if "exclusiveMaximum" in schema:
        out["maximum"] = schema["exclusiveMaximum"]
        out["exclusiveMaximum"] = True


def _enum_type(values: list[Any]) -> str:
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        return "boolean"
    if kinds <= {int}:
        return "integer"
    return "string"


def _model_schema(model: Any) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def openapi_schema() -> Schema:
    spec = _model_schema(AxolotlJobSpec)
    spec["properties"]["config"]["x-kubernetes-validations"] = [IMMUTABLE_CONFIG_RULE]
    return {
        "type": "object",
        "description": "An Axolotl fine-tuning job: the Axolotl config and how to run it on Kubernetes.",
        "required": ["spec"],
        "x-kubernetes-validations": [NAME_LENGTH_RULE],
        "properties": {
            "apiVersion": {"type": "string", "description": "axolotl.ai/v1alpha1"},
            "kind": {"type": "string", "description": "AxolotlJob"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": _model_schema(AxolotlJobStatus),
        },
    }


def crd() -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `axolotl-operator crd` from the pydantic models; do not edit.\n"
    return header + dump(crd())
