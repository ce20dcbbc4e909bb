"""The API page: the OpenAPI document as one self-contained HTML page (``GET /v1/docs/api``)."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from typing import Any

from api.openapi import COMPONENT_PREFIX

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem 2rem;color:#1b1f24}
h1,h2,h3{line-height:1.2}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2.5rem}
code,pre{font:13px/1.4 ui-monospace,monospace}pre{background:#f6f8fa;padding:.8rem;overflow:auto;border-radius:6px}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;
vertical-align:top}.op{border:1px solid #d0d7de;border-radius:6px;padding:.2rem 1rem;margin:1rem 0}
.m{display:inline-block;min-width:4rem;font-weight:700;color:#fff;border-radius:4px;padding:0 .4rem;text-align:center}
.get{background:#0969da}.post{background:#1a7f37}.put,.patch{background:#9a6700}.delete{background:#cf222e}
.dep{color:#cf222e;font-weight:700}nav a{margin-right:1rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _schema_link(ref: str | None) -> str:
    if not ref:
        return ""
    name = ref.removeprefix(COMPONENT_PREFIX)
    return f'<a href="#schema-{_e(name)}"><code>{_e(name)}</code></a>'


def _response_rows(document: Mapping[str, Any], responses: Mapping[str, Any]) -> Iterable[str]:
    shared = document["components"]["responses"]
    for status, response in responses.items():
        if "$ref" in response:
            response = shared[response["$ref"].rsplit("/", 1)[-1]]
        media: dict[str, Any] = next(iter(response.get("content", {}).values()), {})
        schema_ref = media.get("schema", {}).get("$ref")
        headers = ", ".join(f"<code>{_e(h)}</code>" for h in response.get("headers", {}))
        yield (
            f"<tr><td>{_e(status)}</td><td>{_e(response['description'])}</td>"
            f"<td>{_schema_link(schema_ref)}</td><td>{headers}</td></tr>"
        )


def render_api_page(document: Mapping[str, Any]) -> str:
    """The OpenAPI document as one self-contained HTML page: no script, no external resource.

    Every value from the document is HTML-escaped.
    """
    parts: list[str] = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(document['info']['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(document['info']['title'])} <small>{_e(document['info']['version'])}</small></h1>",
        f"<p>{_e(document['info']['description'])}</p>",
        '<p>Machine-readable: <a href="/v1/openapi.json"><code>/v1/openapi.json</code></a> (OpenAPI '
        f"{_e(document['openapi'])}).</p>",
        "<nav>"
        + "".join(f'<a href="#tag-{_e(t["name"])}">{_e(t["name"])}</a>' for t in document["tags"])
        + '<a href="#errors">error codes</a><a href="#schemas">schemas</a></nav>',
    ]
    by_tag: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {}
    for path, item in document["paths"].items():
        for method, op in item.items():
            by_tag.setdefault(op["tags"][0], []).append((path, method, op))
    for tag in document["tags"]:
        parts.append(f'<h2 id="tag-{_e(tag["name"])}">{_e(tag["name"])}</h2><p>{_e(tag["description"])}</p>')
        for path, method, op in by_tag.get(tag["name"], []):
            parts.append(f'<div class="op" id="op-{_e(op["operationId"])}">')
            deprecated = ' <span class="dep">deprecated</span>' if op.get("deprecated") else ""
            parts.append(
                f'<h3><span class="m {_e(method)}">{_e(method.upper())}</span> <code>{_e(path)}</code>{deprecated}</h3>'
            )
            parts.append(f"<p><strong>{_e(op['summary'])}</strong></p>")
            if op.get("description"):
                parts.append(f"<p>{_e(op['description'])}</p>")
            scope = op.get("x-required-scope")
            access = f"scope <code>{_e(scope)}</code>" if scope else "public (no token)"
            rate = op.get("x-rate-limit-class")
            parts.append(
                f"<p>Access: {access}" + (f"; rate-limit class <code>{_e(rate)}</code>" if rate else "") + "</p>"
            )
            rows = []
            for param in op["parameters"]:
                if "$ref" in param:
                    param = document["components"]["parameters"][param["$ref"].rsplit("/", 1)[-1]]
                rows.append(
                    f"<tr><td><code>{_e(param['name'])}</code></td><td>{_e(param['in'])}</td>"
                    f"<td>{'yes' if param.get('required') else 'no'}</td><td>{_e(param.get('description', ''))}</td>"
                    f"<td><code>{_e(json.dumps(param['schema']))}</code></td></tr>"
                )
            if rows:
                parts.append(
                    "<table><tr><th>parameter</th><th>in</th><th>required</th><th>description</th><th>schema</th></tr>"
                    + "".join(rows)
                    + "</table>"
                )
            if "requestBody" in op:
                body = op["requestBody"]
                ref = body["content"]["application/json"]["schema"]["$ref"]
                optional = "" if body.get("required") else " (optional)"
                parts.append(f"<p>Request body{optional}: <code>application/json</code> {_schema_link(ref)}</p>")
            parts.append(
                "<table><tr><th>status</th><th>meaning</th><th>body</th><th>headers</th></tr>"
                + "".join(_response_rows(document, op["responses"]))
                + "</table></div>"
            )
    codes = document["components"]["schemas"]["ErrorCode"]["oneOf"]
    parts.append('<h2 id="errors">Error codes</h2><table><tr><th>code</th><th>meaning</th></tr>')
    parts += [f"<tr><td><code>{_e(c['const'])}</code></td><td>{_e(c['description'])}</td></tr>" for c in codes]
    parts.append('</table><h2 id="schemas">Schemas</h2>')
    for name, schema in document["components"]["schemas"].items():
        parts.append(
            f'<h3 id="schema-{_e(name)}"><code>{_e(name)}</code></h3><pre>{_e(json.dumps(schema, indent=2))}</pre>'
        )
    parts.append("</body></html>")
    return "\n".join(parts)
