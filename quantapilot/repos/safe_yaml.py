"""YAML a repository supplies (``quantapilot.yml``, the front matter of its Markdown), parsed within fixed limits.

``yaml.safe_load`` shares aliased nodes, so parsing a "billion laughs" document is cheap, but everything that
walks the result (schema validation, pydantic, converting dates, JSON encoding) pays its fully expanded size.
:func:`load_yaml` composes the document (with libyaml where it is installed), measures the node graph before
anything is built from it and refuses a document over any limit:

* more than :data:`MAX_YAML_BYTES` of text;
* more than :data:`MAX_YAML_ALIASES` aliases (``*name``, merge keys included);
* more than :data:`MAX_YAML_NODES` nodes once every alias is expanded;
* nesting deeper than :data:`MAX_YAML_DEPTH` levels, or an alias inside its own anchor (a cycle).

The measurement walks each distinct node once, so it costs time linear in the text, never in its expansion.
"""

from __future__ import annotations

from typing import Any, Final

import yaml

__all__ = [
    "MAX_YAML_ALIASES",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "YamlLimitError",
    "load_yaml",
]

#: Largest accepted document; a settings file or a front matter block is a few KiB.
MAX_YAML_BYTES: Final = 256 * 1024
#: Aliases allowed in one document: enough for a few ``<<: *defaults`` merges, far from a bomb.
MAX_YAML_ALIASES: Final = 64
#: Nodes of the document with every alias expanded; bounds what consumers walk after parsing.
MAX_YAML_NODES: Final = 50_000
#: Nesting depth (scalars count as a level, as PyYAML's composer counts them).
MAX_YAML_DEPTH: Final = 64

# The C parser is several times faster; the pure-Python one is used where libyaml is absent.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_MESSAGE_CHARS = 300


class YamlLimitError(ValueError):
    """A document over one of the limits (size, aliases, expanded nodes, depth, recursion)."""


class _Loader(_Base):  # type: ignore[misc,valid-type]
    """Safe loader; timestamps stay strings (``due_date: 2025-01-31`` is what a schema describes)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


class _TimestampLoader(_Base):  # type: ignore[misc,valid-type]
    """Safe loader that keeps YAML's timestamp resolution (front matter turns dates into ISO strings later)."""


class _UniqueKeys:
    """Mixin refusing repeated mapping keys: in a settings file a second ``version:`` silently hides a typo."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Merge keys (``<<``) are left to PyYAML, which lets explicit keys override merged ones.
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key_node.value!r}"[:_MAX_MESSAGE_CHARS],
                        key_node.start_mark,
                    )
                seen.add(key)
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)  # type: ignore[misc]
        return result


class _UniqueLoader(_UniqueKeys, _Loader):
    pass


class _UniqueTimestampLoader(_UniqueKeys, _TimestampLoader):
    pass


_LOADERS: Final[dict[tuple[bool, bool], type[yaml.SafeLoader]]] = {
    (False, False): _Loader,
    (False, True): _TimestampLoader,
    (True, False): _UniqueLoader,
    (True, True): _UniqueTimestampLoader,
}


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_graph(root: yaml.Node) -> None:
    """Refuse a composed document over the alias, node, depth or recursion limits.

    The first pass counts distinct nodes and references: every reference beyond a node's first is an alias,
    so aliases are reported before their expansion. The second is a post-order walk that sizes each distinct
    node once (memoised), so it is linear in the document, not in its expansion.
    """
    seen: set[int] = {id(root)}
    references = 0
    stack = [root]
    while stack:
        for child in _children(stack.pop()):
            references += 1
            if id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    if references - (len(seen) - 1) > MAX_YAML_ALIASES:
        raise YamlLimitError(f"more than {MAX_YAML_ALIASES} YAML aliases")

    sizes: dict[int, tuple[int, int]] = {}  # id -> (expanded nodes, depth)
    in_progress: set[int] = set()
    walk: list[tuple[yaml.Node, bool]] = [(root, False)]
    while walk:
        node, children_done = walk.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_done:
            in_progress.discard(key)
            total = 1 + sum(sizes[id(child)][0] for child in children)
            depth = 1 + max((sizes[id(child)][1] for child in children), default=0)
            if total > MAX_YAML_NODES:
                raise YamlLimitError(f"more than {MAX_YAML_NODES} nodes once aliases are expanded")
            if depth > MAX_YAML_DEPTH:
                raise YamlLimitError(f"nesting deeper than {MAX_YAML_DEPTH} levels")
            sizes[key] = (total, depth)
            continue
        in_progress.add(key)
        walk.append((node, True))
        for child in children:
            if id(child) in in_progress:
                raise YamlLimitError("recursive YAML aliases")
            if id(child) not in sizes:
                walk.append((child, False))


def load_yaml(text: str, *, unique_keys: bool = False, timestamps: bool = False) -> Any:
    """Parse one YAML document within the limits of this module.

    Args:
        text: The document.
        unique_keys: Refuse a mapping that repeats a key (otherwise the last one wins, as in plain YAML).
        timestamps: Resolve unquoted dates and times to ``date``/``datetime`` objects (otherwise strings).

    Returns:
        The document's data (``None`` for an empty document).

    Raises:
        YamlLimitError: The document is over a limit; nothing was built from it.
        yaml.YAMLError: It is not valid YAML, holds more than one document, uses a tag the safe loader does
            not know, or repeats a key when ``unique_keys`` is set.
    """
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_YAML_BYTES:
        raise YamlLimitError(f"larger than {MAX_YAML_BYTES} bytes")
    loader = _LOADERS[(unique_keys, timestamps)](text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
