"""YAML in and out, reading numbers the way kubectl does, and refusing input built to exhaust the reader.

PyYAML follows YAML 1.1, where `2e-4` (no dot) is a string; kubectl reads it as a number. The CLI must
see what the API server will see, so floats use the YAML 1.2 rule, and integer and boolean mapping keys
become the strings the API server makes of them (`128041:` -> `"128041"`).

User files are hostile until proven otherwise, so `load_all` bounds what a document may cost. Anchors and
aliases stay allowed (kubectl accepts them and real configs reuse blocks with `<<: *defaults`); what is
bounded is what they expand to, measured on the composed node graph (each shared node is measured once and
counted once per alias), never by expanding it. Every check is linear in the size of the input:

- the input: at most MAX_INPUT_BYTES (Kubernetes stores objects of at most 1.5 MiB);
- nesting: at most MAX_DEPTH collections deep, counted while composing (PyYAML composes recursively, so a
  deeper document would end in a RecursionError) and again with aliases expanded;
- values: at most MAX_VALUES scalars, lists and mappings in the whole input, counted while composing and
  again with aliases expanded (a "billion laughs" alias bomb composes to a few dozen nodes but expands to
  10^9, and everything after the reader walks the expansion); an alias of its own ancestor is refused;
- merge keys: at most one `<<` per mapping (PyYAML's merge is quadratic in their number).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode

MAX_INPUT_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 100
MAX_VALUES = 10_000  # in the whole input; the largest real manifests have a few hundred

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_STRING_KEYS = {_STR, "tag:yaml.org,2002:value"}  # `=` is a string key once constructed
_KEY_AS_STRING = {  # key tag -> how the API server spells such a key (sigs.k8s.io/yaml)
    "tag:yaml.org,2002:int": lambda loader, node: str(loader.construct_yaml_int(node)),
    "tag:yaml.org,2002:bool": lambda loader, node: "true" if loader.construct_yaml_bool(node) else "false",
}


class YAMLLimitError(yaml.YAMLError):
    """Well-formed YAML that no manifest is: larger, deeper or more self-referential, or a non-string key."""

    def __init__(self, message: str, node_or_mark: Node | yaml.Mark | None = None) -> None:
        mark = node_or_mark.start_mark if isinstance(node_or_mark, Node) else node_or_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        super().__init__(where + message)


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._composed = 0  # nodes and aliases composed in the current document
        self.values_left = MAX_VALUES  # expanded values the rest of the input may hold

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        """Count nodes and collection nesting before descending: the composer recurses once per level."""
        self._composed += 1  # an alias counts too: it stands for at least one value
        if self._composed > self.values_left:
            raise YAMLLimitError(_too_many(), self.peek_event().start_mark)
        if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YAMLLimitError(_too_deep(), self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Node) -> Any:
        self.values_left -= _check_graph(self, node)
        self._composed = 0
        return super().construct_document(node)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def _too_many() -> str:
    return f"more than {MAX_VALUES} values in the input (a manifest has a few hundred): is it the right file?"


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} lists/mappings deep; a manifest is a few levels deep, flatten it"


def _check_graph(loader: _Loader, root: Node) -> int:
    """The document's size with aliases expanded; refuse it past the limits; spell int/bool keys as strings.

    An iterative post-order walk that measures each distinct node once (memoised), so the cost is the size
    of the composed graph, not of its expansion.
    """
    values: dict[int, int] = {}  # id(node) -> number of values once aliases are expanded
    depths: dict[int, int] = {}  # id(node) -> collection nesting once aliases are expanded
    entered: set[int] = set()
    stack: list[tuple[Node, list[Node] | None]] = [(root, None)]
    while stack:
        node, children = stack.pop()
        key = id(node)
        if children is not None:  # all children measured: measure the node
            values[key] = 1 + sum(values[id(child)] for child in children)
            depths[key] = 1 + max((depths[id(child)] for child in children), default=0)
            if depths[key] > MAX_DEPTH:
                raise YAMLLimitError(_too_deep() + " (counting what its aliases repeat)", node)
            if values[key] > loader.values_left:
                raise YAMLLimitError(
                    f"more than {MAX_VALUES} values in the input once aliases are expanded (an alias bomb?); "
                    "a manifest has a few hundred: write the repeated parts out or alias fewer of them",
                    node,
                )
        elif key in values:
            continue  # measured already: another alias of the same node
        elif not isinstance(node, CollectionNode):
            values[key], depths[key] = 1, 0
        elif key in entered:
            raise YAMLLimitError("an alias refers to a list/mapping that contains it (a cycle)", node)
        else:
            entered.add(key)
            children = _children(loader, node)
            stack.append((node, children))
            stack.extend((child, None) for child in children if id(child) not in values)
    return values[id(root)]


def _children(loader: _Loader, node: CollectionNode) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    assert isinstance(node, MappingNode)
    merges = 0
    for key_node, _ in node.value:
        if key_node.tag == _MERGE:
            merges += 1
            if merges > 1:
                raise YAMLLimitError(
                    "more than one '<<' merge key in a mapping; write <<: [*a, *b]", key_node
                )
        elif not isinstance(key_node, ScalarNode):
            raise YAMLLimitError("a mapping key is a list or mapping; keys must be strings", key_node)
        elif key_node.tag in _KEY_AS_STRING:
            key_node.value = _KEY_AS_STRING[key_node.tag](loader, key_node)
            key_node.tag = _STR
        elif key_node.tag not in _STRING_KEYS:
            raise YAMLLimitError(
                f"the mapping key {key_node.value[:40]!r} is not a string; quote it", key_node
            )
    return [child for pair in node.value for child in pair]


def load_all(text: str) -> list[Any]:
    """Every non-empty document in a (multi-document) YAML or JSON text, within the limits above."""
    if len(text) > MAX_INPUT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_INPUT_BYTES:
        raise YAMLLimitError(
            f"the input is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB; "
            "a manifest is far smaller (Kubernetes stores at most 1.5 MiB): is it the right file?"
        )
    return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Multi-line strings (the rendered config.yaml) as readable `|` blocks."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120)


def dump_all(documents: list[Any]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=120)
