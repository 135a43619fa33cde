"""mkdocs hook: pages generated at build time, so they can never drift from the code.

- `reference/case-file.md`: every table, key, type, default and constraint of a case file, walked from the pydantic
  schema (`assim.case.config.Case` and the discriminated unions of `assim/case/schema/`); the description of a key
  is its trailing comment in the schema's source.
- `reference/api/*.md`: one mkdocstrings page per subpackage of the public namespace (`assim._EXPORTS`) and one
  for the `Abstract*` extension points.
- `assets/results/...`: the benchmark figures, served from `benchmarks/results/` without a copy in `docs/`.

Run `python docs/hooks/generate.py` to print the case-file reference without building the site.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from pathlib import Path

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------- the case-file reference
def _constraint(meta) -> str | None:
    """One annotated-types constraint as text (`> 0`, `≤ 1`, `length ≥ 1`), None for other metadata."""
    for cls, attr, sign in ((at.Gt, "gt", ">"), (at.Ge, "ge", "≥"), (at.Lt, "lt", "<"), (at.Le, "le", "≤")):
        if isinstance(meta, cls):
            return f"{sign} {getattr(meta, attr):g}" if isinstance(getattr(meta, attr), float) else f"{sign} {getattr(meta, attr)}"
    if isinstance(meta, at.MinLen):
        return f"length ≥ {meta.min_length}"
    if isinstance(meta, at.MaxLen):
        return f"length ≤ {meta.max_length}"
    if isinstance(meta, at.MultipleOf):
        return f"multiple of {meta.multiple_of}"
    if isinstance(meta, FieldInfo):  # Field(gt=...) inside Annotated
        found = [_constraint(m) for m in meta.metadata]
        return ", ".join(c for c in found if c) or None
    return None


def _is_table(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tables(tp) -> list:
    """The table classes a type can be, through Annotated and unions (not inside arrays or dicts)."""
    if _is_table(tp):
        return [tp]
    if typing.get_origin(tp) is typing.Annotated:
        return _tables(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(tp) for t in _tables(a)]
    return []


def _dict_tables(tp) -> list:
    """The table classes of a dict's values (`table of string → PriorConfig`), through Annotated and unions."""
    if typing.get_origin(tp) is typing.Annotated:
        return _dict_tables(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(tp) for t in _dict_tables(a)]
    if typing.get_origin(tp) is dict:
        return _tables(typing.get_args(tp)[1])
    return []


def _discriminated(tp) -> bool:
    if typing.get_origin(tp) is not typing.Annotated:
        return False
    return any(isinstance(m, FieldInfo) and m.discriminator for m in typing.get_args(tp)[1:])


def _kind(cls) -> str:
    field = cls.model_fields.get("kind")
    args = typing.get_args(field.annotation) if field is not None else ()
    return args[0] if args else cls.__name__


def _type(tp, anchors: dict) -> str:
    """A type as readers write it in TOML terms; tables link to their section."""
    if tp is type(None):
        return "none (omit the key)"
    if tp is typing.Any:
        return "any"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        limits = [c for c in (_constraint(m) for m in args[1:]) if c]
        if _discriminated(tp):
            return _type(args[0], anchors)
        return _type(args[0], anchors) + (f" ({', '.join(limits)})" if limits else "")
    if origin is typing.Literal:
        return " \\| ".join(f'`{json.dumps(a)}`' for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a, anchors) for a in args)
    if origin in (list, tuple, set, frozenset):
        inner = [a for a in args if a is not Ellipsis]
        return "array of " + (" , ".join(_type(a, anchors) for a in inner) if inner else "any")
    if origin is dict:
        return f"table of {_type(args[0], anchors)} → {_type(args[1], anchors)}" if args else "table"
    if _is_table(tp):
        return f"[{tp.__name__}](#{anchors.get(tp, tp.__name__.lower())})"
    return {str: "string", int: "integer", float: "float", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "**required**"
    else:
        value = info.default
    if isinstance(value, BaseModel):  # a table default: the keys that differ from their own defaults
        value = value.model_dump(mode="json", exclude_defaults=True) or {}
    if value is None:
        return "—"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"`{text}`"


def _comments(cls) -> dict[str, str]:
    """The trailing comment of each `key: type = default  # comment` line of a schema class's source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = {}
    for line in source.splitlines():
        match = re.match(r"^    (\w+)\s*:[^#]*#\s*(.+)$", line)
        if match and "noqa" not in match.group(2):
            found[match.group(1)] = match.group(2).strip()
    return found


def _doc(cls) -> str:
    doc = inspect.getdoc(cls) or ""
    return "" if doc == inspect.getdoc(BaseModel) else doc


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def case_reference() -> str:
    """The case-file reference page, in Markdown."""
    from assim.case.config import Case

    # Breadth-first from Case: every table class once, with the key path where it first appears.
    order: list[tuple[type, str, str | None]] = []  # (class, key path, union it is a kind of)
    seen: set[type] = set()
    queue: list[tuple[type, str, str | None]] = [(Case, "", None)]
    unions: dict[str, list[type]] = {}
    while queue:
        cls, path, union = queue.pop(0)
        if cls in seen:
            continue
        seen.add(cls)
        order.append((cls, path, union))
        for name, info in cls.model_fields.items():
            sub = f"{path}.{name}" if path else name
            tp = info.annotation
            tables = _tables(tp)  # a table of several kinds: a tagged union (possibly inside `X | None`)
            tagged = len(tables) > 1 and all("kind" in t.model_fields for t in tables)
            keyed = _dict_tables(tp)  # a table of named tables: `[discover.parameters.<name>]`
            if len(keyed) > 1 and all("kind" in t.model_fields for t in keyed):
                for t in keyed:
                    queue.append((t, f"{sub}.<name>", f"{sub}.<name>"))
                    unions.setdefault(f"{sub}.<name>", []).append(t)
            stack = [tp]
            while stack:
                t = stack.pop(0)
                if _is_table(t):
                    queue.append((t, sub, sub if tagged else None))
                    if tagged:
                        unions.setdefault(sub, [])
                        if t not in unions[sub]:
                            unions[sub].append(t)
                else:
                    stack.extend(a for a in typing.get_args(t) if not isinstance(a, (str, int, float, FieldInfo)))
    anchors = {cls: cls.__name__.lower() for cls, _, _ in order}

    out = [
        "# Case-file reference",
        "",
        "<!-- Generated by docs/hooks/generate.py from the pydantic schema (assim.case.config.Case and",
        "     assim/case/schema/); do not edit: change the schema and its comments instead. -->",
        "",
        "A case is one TOML file. Every table below forbids unknown keys (a misspelt key is a one-line error naming",
        "it), numbers must be finite, and where a table has a `kind`, the `kind` picks which of the listed variants",
        "the table is. The *constraints* column gives the bounds the schema enforces on a value; cross-key checks",
        "(e.g. `cycling` windows must fit in `time.n_steps`) are run by `assim validate` after these. Any key can be",
        "overridden from the command line with `--set key.sub=VALUE` (VALUE parsed as TOML).",
        "",
        "This page is generated from the schema at every build of the site.",
        "",
        "## Tables",
        "",
    ]
    for path, members in unions.items():
        kinds = ", ".join(f"[`{_kind(m)}`](#{anchors[m]})" for m in members)
        out.append(f"- `[{path}]`: `kind` = {kinds}")
    out.append("")
    for cls, path, union in order:
        title = "The top level" if cls is Case else f"`{cls.__name__}`"
        out += [f"## {title} {{ #{anchors[cls]} }}", ""]
        where = f"`[{path}]`" if path else "the file's top level"
        if union:
            out.append(f"At {where}, with `kind = \"{_kind(cls)}\"`.")
        elif cls is not Case:
            out.append(f"At {where} (and wherever a key has this type).")
        doc = _doc(cls)
        if doc:
            out += ["", doc]
        out += ["", "| key | type | default | constraints | description |", "|---|---|---|---|---|"]
        notes = _comments(cls)
        for name, info in cls.model_fields.items():
            limits = ", ".join(c for c in (_constraint(m) for m in info.metadata) if c) or ""
            description = info.description or notes.get(name, "")
            row = [f"`{name}`", _type(info.annotation, anchors), _default(info), limits, _cell(description)]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the API reference
_GROUPS = {  # page: (title, subpackage prefixes of assim._EXPORTS)
    "covariances": ("Covariances", ("assim.covariances",)),
    "observations": ("Observations", ("assim.observations",)),
    "problems": ("Problems", ("assim.problems",)),
    "solvers": ("Solvers", ("assim.solvers",)),
    "learned": ("Learned solvers", ("assim.learned",)),
    "errors": ("Errors and case forms", ("assim.errors", "assim.case")),
}


def api_pages() -> dict[str, str]:
    """`reference/api/<page>.md` → Markdown with one mkdocstrings `:::` block per public name."""
    import assim

    pages = {}
    for page, (title, prefixes) in _GROUPS.items():
        names = [(m, n) for m, ns in assim._EXPORTS.items() for n in ns
                 if m.startswith(prefixes) and not n.startswith("Abstract")]
        lines = [f"# {title}", "",
                 "Generated from the docstrings; every name here is importable as `from assim import NAME`. The",
                 "`Abstract*` classes these implement are on the [extension points](extension-points.md) page.", ""]
        for module, name in sorted(names, key=lambda mn: mn[1].lower()):
            lines += [f"::: {module}.{name}", ""]
        pages[f"reference/api/{page}.md"] = "\n".join(lines)
    abstract = [(m, n) for m, ns in assim._EXPORTS.items() for n in ns if n.startswith("Abstract")]
    lines = ["# Extension points", "",
             "The `Abstract*` classes of `import assim`: subclass one (an `equinox.Module`) to add a covariance, an",
             "observation operator, a preconditioner, a loss, ... that the rest of assim then uses unchanged. The",
             "physics' own extension point, `models.base.AbstractModel`, is documented last.", ""]
    for module, name in sorted(abstract, key=lambda mn: mn[1]):
        lines += [f"::: {module}.{name}", ""]
    lines += ["::: models.base.AbstractModel", ""]
    pages["reference/api/extension-points.md"] = "\n".join(lines)
    return pages


# ---------------------------------------------------------------- mkdocs hooks
def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/case-file.md", content=case_reference()))
    for uri, text in api_pages().items():
        files.append(File.generated(config, uri, content=text))
    for png in sorted(FIGURES.rglob("*.png")):
        uri = "assets/results/" + png.relative_to(FIGURES).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files


if __name__ == "__main__":
    print(case_reference())
