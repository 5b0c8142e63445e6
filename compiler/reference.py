"""The model.yaml reference (docs/reference/model-yaml.md), generated from the same
JSON Schema `mscompile schema` prints: one table per section, every key with its
type, default and description. `mscompile schema --markdown` writes it; a test
fails when the committed page differs from what the schema gives."""

from __future__ import annotations

import json
from typing import Any

from .tasks import json_schema


def _type(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        name = spec["$ref"].rpartition("/")[2]
        return f"[{name}](#{name.lower()})"
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    if "enum" in spec:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in spec["enum"])
    for key in ("anyOf", "oneOf"):
        if key in spec:
            return " or ".join(_type(s) for s in spec[key] if s.get("type") != "null" or len(spec[key]) == 1)
    t = spec.get("type", "any")
    if t == "array":
        return f"list of {_type(spec.get('items', {}))}"
    if t == "object" and "additionalProperties" in spec and isinstance(spec["additionalProperties"], dict):
        return f"map of {_type(spec['additionalProperties'])}"
    return str(t)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    schema = json_schema()
    defs = schema["$defs"]
    roots = [r["$ref"].rpartition("/")[2] for r in schema["oneOf"]]
    out = [
        "# model.yaml reference",
        "",
        "Generated from `mscompile schema` by `mscompile schema --markdown`; do not edit by hand.",
        "A model.yaml is one of these roots, told apart by `task`: "
        + ", ".join(f"[{r}](#{r.lower()})" for r in roots)
        + ". Relative paths start at the working directory.",
        "",
    ]
    for name in roots + sorted(n for n in defs if n not in roots):
        d = defs[name]
        props = d.get("properties")
        out += [f"## {name}", ""]
        if d.get("description"):
            out += [_cell(d["description"]), ""]
        if not props:
            out += [f"Type: {_type(d)}.", ""]
            continue
        required = set(d.get("required", []))
        out += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key, spec in props.items():
            default = "required" if key in required else f"`{json.dumps(spec['default'])}`" if "default" in spec else ""
            out.append(f"| `{key}` | {_cell(_type(spec))} | {_cell(default)} | {_cell(spec.get('description', ''))} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
