"""The request bodies of the hub's routes: what the routes accept and what the OpenAPI
document shows, the same models.

The hub routes read their bodies by hand (`request.json()`, a form, an NDJSON stream, raw
bytes), with the Hub's own error shape, so FastAPI never sees a body parameter and the
document would show none. Each route validates its body with `parse` (or `parse_form`)
against one of these models, strictly, as JSON means it (no "3" for 3), and a body that
fails is a 400 naming the field; `openapi_extra=request_body(...)` puts the same model on
the route's entry. Unknown keys are ignored, hence `extra="allow"` (the document says
`additionalProperties`).

Schemas are inlined (no `$ref`): an operation's `openapi_extra` cannot add to the
document's `components`, and a `#/$defs/...` reference would not resolve there.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal, TypeVar, get_origin
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from mae_core.repo_store import SHA256_RE, HubError

SHA256 = SHA256_RE.pattern


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- repos and branches ---------------------------------------------------------------------
class ValidateYaml(_Body):
    """A model card to check: its YAML header must parse (sent when a README.md is uploaded)."""

    content: str = Field("", description="the whole README.md, YAML header included")
    repoType: str | None = Field(None, description="the repo type; ignored (models only here)")


class CreateRepo(_Body):
    """The repo to create: `organization/name` (`name` alone must hold the namespace)."""

    name: str = Field(min_length=1, description="the repo's name (the part after the slash)")
    organization: str | None = Field(None, description="the namespace (before the slash)")
    type: Literal["model"] | None = Field(None, description="only model repos; others are 400")
    visibility: str | None = Field(
        None, description='"private" makes the repo private (huggingface_hub 1.x and later)'
    )
    private: bool | None = Field(None, description="true makes the repo private (older clients)")


class DeleteRepo(_Body):
    """The repo to delete, whole: every branch, commit and file."""

    name: str = Field(min_length=1, description="the repo's name (the part after the slash)")
    organization: str | None = Field(None, description="the namespace (before the slash)")
    type: Literal["model"] | None = Field(None, description="only model repos; others are 400")


class CreateBranch(_Body):
    """Where the new branch starts; an empty body or `{}` starts it at `main`'s head."""

    startingPoint: str | None = Field(
        None, description="a branch or a commit sha (default: the head of main)"
    )


# -- reading --------------------------------------------------------------------------------
class PathsInfo(_Body):
    """The paths to describe (files or folders); paths not in the revision are left out."""

    paths: list[str] = Field(
        default_factory=list, description="paths in the repo (a form field: repeat it)"
    )
    expand: bool | None = Field(
        None, description="accepted and ignored: no last commit or security scan is kept"
    )


# -- uploads --------------------------------------------------------------------------------
class PreuploadFile(_Body):
    """One file the client is about to commit."""

    path: str = Field(description="the file's path in the repo")
    size: int = Field(0, ge=0, description="its size in bytes (10 MiB or more: LFS-sized)")
    sample: str | None = Field(
        None, description="base64 of its first bytes; not used (no content sniffing here)"
    )


class Preupload(_Body):
    """The files of a coming commit: the answer says which go inline ("regular") and which
    over Git LFS ("lfs": only with the `X-MAE-LFS: basic` header)."""

    files: list[PreuploadFile] = Field(description="the files to be committed")
    gitIgnore: str | None = Field(
        None, description="a .gitignore to apply; ignored (no file is ever skipped)"
    )


class LfsObject(_Body):
    """An LFS object, named by its content."""

    oid: str = Field(pattern=SHA256, description="its sha256, lowercase hex")
    size: int = Field(ge=0, description="its size in bytes")


class LfsRef(_Body):
    name: str = Field(description="the branch the objects are for (not checked)")


class LfsBatch(_Body):
    """A Git LFS batch request: which of these objects must be uploaded, and where to. Each
    object not yet stored gets a signed, short-lived PUT URL (`actions.upload.href`)."""

    operation: Literal["upload"] = Field(
        description='only "upload"; downloads go through /resolve/ (400)'
    )
    objects: list[LfsObject] = Field(default_factory=list, description="the objects")
    transfers: list[str] | None = Field(
        None, description='transfer adapters the client speaks; the answer is always "basic"'
    )
    hash_algo: str | None = Field(None, description="ignored: every oid here is a sha256")
    ref: LfsRef | None = Field(None, description="the branch the objects are for")


# -- the commit (NDJSON: one JSON object a line) ----------------------------------------------
class CommitHeader(_Body):
    """The commit's message and, optionally, the head it must apply to."""

    summary: str = Field("", description="the commit's title")
    description: str = Field("", description="the rest of the commit message")
    parentCommit: str | None = Field(
        None, description="the sha the branch must be at, else 412 (no merge is tried)"
    )


class InlineFile(_Body):
    """A file added or replaced, its bytes inline."""

    path: str = Field(description="the file's path in the repo")
    content: str = Field("", description="the file's bytes, base64")
    encoding: Literal["base64"] = Field("base64", description="only base64")


class LfsFile(_Body):
    """A file added or replaced, its bytes already uploaded over Git LFS."""

    path: str = Field(description="the file's path in the repo")
    algo: Literal["sha256"] = Field("sha256", description="only sha256")
    oid: str = Field(pattern=SHA256, description="the object's sha256, lowercase hex")
    size: int | None = Field(
        None,
        ge=0,
        description="its size in bytes; it must match the uploaded object's, else 400. "
        "Left out (huggingface_hub's copy of an LFS file): the object must already be in "
        "this repo, and its size is the stored one",
    )


class DeletedPath(_Body):
    """A file, or a folder with everything under it, removed by the commit."""

    path: str = Field(description="the path in the repo; missing from the branch: 404")


class HeaderLine(_Body):
    """The commit's message: the body's first line, and only that one."""

    key: Literal["header"]
    value: CommitHeader


class FileLine(_Body):
    key: Literal["file"]
    value: InlineFile


class LfsFileLine(_Body):
    key: Literal["lfsFile"]
    value: LfsFile


class DeletedFileLine(_Body):
    key: Literal["deletedFile"]
    value: DeletedPath


class DeletedFolderLine(_Body):
    key: Literal["deletedFolder"]
    value: DeletedPath


CommitLine = Annotated[
    HeaderLine | FileLine | LfsFileLine | DeletedFileLine | DeletedFolderLine,
    Field(discriminator="key"),
]

COMMIT_DESCRIPTION = (
    "NDJSON: one JSON object per line, each `{key, value}`; the schema is that of one line. "
    'The first line is the header (`"key": "header"`: summary, description, parentCommit), '
    "and no other line is; a body without it first is refused (400). Then one line per "
    "operation: `file` (bytes inline, base64), `lfsFile` (an object uploaded through the "
    "LFS batch API; without `size`, an object already in this repo: huggingface_hub's copy "
    "of an LFS file), `deletedFile` or `deletedFolder`. Other keys (`copyFile`) are refused "
    "(400): huggingface_hub sends a copy as a `file` or `lfsFile` line. A line that does "
    "not fit its schema is a 400 naming the line and the field. The whole body may hold "
    "MAE_HUB_MAX_COMMIT_BYTES at most (413)."
)


# -- validating a body ---------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)
ERRORS_SHOWN = 3  # a message names this many problems at most, then counts the rest


def _field(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as a client reads it: `files[0].size`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem(error: dict[str, Any], hints: dict[str, str], tagged: bool) -> str:
    """One validation error as `field must be ..., not <what was sent>`; `tagged`: of a
    discriminated union, whose locations start with the branch's tag (left out)."""
    kind, ctx, loc = error["type"], error.get("ctx", {}), tuple(error["loc"])
    given = error.get("input")
    if tagged and loc:
        loc = loc[1:]
    if kind == "union_tag_invalid":  # a commit line's key: the location is the whole line
        loc, given = ("key",), ctx.get("tag")
    elif kind == "union_tag_not_found":
        loc = ("key",)
    field = _field(loc) or "the body"
    hint = hints.get(field)
    if hint:
        return f"{field}: {hint}" + ("" if kind == "missing" else f" (got {_shown(given)})")
    if kind in ("missing", "union_tag_not_found"):
        return f"{field} is required"
    phrase = {
        "model_type": "must be an object",
        "dict_type": "must be an object",
        "list_type": "must be a list",
        "string_type": "must be a string",
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "literal_error": f"must be {ctx.get('expected')}",
        "union_tag_invalid": f"must be one of {ctx.get('expected_tags')}",
        "string_pattern_mismatch": f"must match {ctx.get('pattern')}",
        "string_too_short": "must not be empty",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
    }.get(kind, error["msg"][:1].lower() + error["msg"][1:])
    return f"{field} {phrase}" + ("" if kind == "string_too_short" else f", not {_shown(given)}")


def validation_message(
    exc: ValidationError, what: str, hints: dict[str, str] | None = None, tagged: bool = False
) -> str:
    """`what` (the body, a commit line) and what is wrong with it, field by field."""
    errors = exc.errors(include_url=False)
    problems = [_problem(e, hints or {}, tagged) for e in errors[:ERRORS_SHOWN]]
    more = len(errors) - ERRORS_SHOWN
    return f"{what}: " + "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)  # built once a type: a commit validates each of its lines


def parse(tp: Any, data: Any, what: str, hints: dict[str, str] | None = None) -> Any:
    """`data` (parsed JSON) as `tp`, a model or an annotated union, strictly: a HubError
    (400) naming each field that does not fit. `hints` replace the generic wording of a
    field's error (by its dotted name) where the route has more to say."""
    try:
        return _adapter(tp).validate_python(data, strict=True)
    except ValidationError as exc:
        tagged = get_origin(tp) is Annotated  # CommitLine
        raise HubError(validation_message(exc, what, hints, tagged)) from None


def parse_form(tp: type[M], raw: str, what: str) -> M:
    """A form body as `tp`: a list field takes every value of its name, another field the
    last one; the values are text, so they are converted (`expand=false`)."""
    fields = parse_qs(raw, keep_blank_values=True)
    lists = {n for n, f in tp.model_fields.items() if get_origin(f.annotation) is list}
    values = {k: v if k in lists else v[-1] for k, v in fields.items()}
    try:
        return tp.model_validate(values)
    except ValidationError as exc:
        raise HubError(validation_message(exc, what)) from None


# -- into the document ----------------------------------------------------------------------
def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with every `#/$defs/` reference replaced by its definition (none is recursive);
    a `None` (`"default": null`) is left out, as FastAPI leaves it out of the document."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k != "$defs" and v is not None}
    if "oneOf" in node:
        node.pop("discriminator", None)
    ref = node.pop("$ref", None)
    if ref is not None:
        node = {**defs[ref.rsplit("/", 1)[-1]], **node}
    return {k: _inline(v, defs) for k, v in node.items()}


def schema_of(tp: Any) -> dict[str, Any]:
    """The JSON schema of a model (or an annotated union), self-contained.

    A discriminator is dropped as well: its mapping names `$defs`, and each branch's `key`
    constant already tells the branches apart."""
    schema = TypeAdapter(tp).json_schema()
    return _inline(schema, schema.get("$defs", {}))


def request_body(
    content: dict[str, Any], *, required: bool = True, description: str | None = None
) -> dict[str, Any]:
    """An operation's `openapi_extra`: its request body, a type (or a ready schema) per media
    type."""
    body: dict[str, Any] = {
        "required": required,
        "content": {
            media: {"schema": tp if isinstance(tp, dict) else schema_of(tp)}
            for media, tp in content.items()
        },
    }
    if description:
        body["description"] = description
    return {"requestBody": body}


BINARY = {"type": "string", "format": "binary"}
