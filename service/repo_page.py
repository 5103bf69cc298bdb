"""A repo's HTML page (`GET /<ns>/<name>`, the URL `mae push` prints, as on the Hub): the
default branch's files with their sizes, the branches, and the model card rendered.

Plain HTML and one inline style, no script: everything taken from the repo is escaped,
and the card goes through markdown-it-py with raw HTML off (a `<script>` in a card shows
as text) and its link check on (no `javascript:` URLs). The Content-Security-Policy
(`CSP`) allows nothing but this page's own style and images from this server, so even a
renderer bug could neither run code nor call out. Without markdown-it-py the card is
shown as escaped text.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote

from mae_core.repo_store import Commit

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:960px;padding:1rem 1.5rem;color:#1f2328}
h1{font-size:1.5rem;margin:.5rem 0}h2{font-size:1.15rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left}
td.size{text-align:right;font-variant-numeric:tabular-nums}code,pre{font:13px ui-monospace,monospace}
pre{background:#f6f8fa;padding:.8rem;overflow:auto}.quiet{color:#59636e}.tag{background:#ddf4ff;
border-radius:1rem;padding:0 .5rem;margin-right:.3rem;font-size:.85rem}img{max-width:100%}
article.card{border:1px solid #d0d7de;border-radius:6px;padding:0 1.2rem}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass
class Branch:
    name: str
    oid: str
    summary: str
    date: str


@dataclass
class RepoView:
    """What the page shows; gathered by the route (in a worker thread), rendered here."""

    repo_id: str
    private: bool
    default_branch: str
    head: Commit | None  # the default branch's commit; None when it has none
    branches: list[Branch]
    card: str | None  # README.md's text; None when absent or too large
    card_size: int | None  # README.md's size in bytes, when it exists
    card_meta: dict[str, Any]


def human_size(n: int) -> str:
    """Bytes in decimal units, as the Hub shows them: 512 B, 24.1 MB."""
    if n < 1000:
        return f"{n} B"
    size, unit = n / 1000, "kB"
    for bigger in ("MB", "GB", "TB"):
        if round(size, 1) < 1000:
            break
        size, unit = size / 1000, bigger
    return f"{size:.1f} {unit}"


def _resolve_url(repo_id: str, oid: str, path: str) -> str:
    return f"/{repo_id}/resolve/{oid}/{quote(path)}"


def _body(card: str) -> str:
    """The card without its YAML header (shown apart, as tags)."""
    if card.startswith("---"):
        _, sep, rest = card[3:].partition("\n---")
        if sep:
            return rest.partition("\n")[2]
    return card


def render_card(card: str, repo_id: str, head: Commit) -> str:
    """The card's Markdown as safe HTML; relative links and images that name a file of
    the repo point at that file at this commit."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # not installed: the text itself, escaped
        return f"<pre>{escape(_body(card))}</pre>"
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    tokens = md.parse(_body(card))
    for token in tokens:
        for child in token.children or ():
            attr = {"image": "src", "link_open": "href"}.get(child.type)
            target = str(child.attrGet(attr) or "") if attr else ""
            path = target.removeprefix("./")
            if path in head.files:
                child.attrSet(attr, _resolve_url(repo_id, head.oid, path))
    return md.renderer.render(tokens, md.options, {})


def render_page(view: RepoView) -> str:
    rid = escape(view.repo_id)
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{rid} · mae-hub</title><style>{STYLE}</style></head><body>",
        f"<header><h1>{rid}</h1>",
    ]
    meta = view.card_meta
    card_tags = meta.get("tags") if isinstance(meta.get("tags"), list) else []
    tags = [meta.get("library_name"), meta.get("pipeline_tag"), *card_tags]
    line = ["<span class=tag>private</span>"] if view.private else []
    line += [f"<span class=tag>{escape(str(t))}</span>" for t in tags if t]
    if line:
        out.append(f"<p>{''.join(line)}</p>")
    out.append(
        f'<p class=quiet>Load it: <code>timm.create_model("hf-hub:{rid}", pretrained=True)</code>'
        f" with <code>HF_ENDPOINT</code> set to this server.</p></header>"
    )
    out += _files(view) + _branches(view) + _card(view)
    out.append("</body></html>")
    return "\n".join(out)


def _files(view: RepoView) -> list[str]:
    branch = escape(view.default_branch)
    head = view.head
    if head is None:
        return [f"<h2>Files</h2><p class=quiet>{branch} has no commit yet.</p>"]
    out = [
        f"<h2>Files <span class=quiet>on {branch} at <code>{escape(head.oid[:12])}</code></span></h2>",
        f"<p class=quiet>{escape(head.summary)} · {escape(head.date)}</p>",
        "<table><thead><tr><th>file</th><th>size</th><th>bytes</th></tr></thead><tbody>",
    ]
    total = 0
    for entry in sorted(head.files.values(), key=lambda e: e.path):
        total += entry.size
        url = escape(_resolve_url(view.repo_id, head.oid, entry.path))
        lfs = " <span class=quiet>LFS</span>" if entry.lfs else ""
        out.append(
            f'<tr><td><a href="{url}">{escape(entry.path)}</a>{lfs}</td>'
            f"<td class=size>{human_size(entry.size)}</td><td class=size>{entry.size}</td></tr>"
        )
    out.append(
        f"</tbody><tfoot><tr><th>{len(head.files)} files</th><th class=size>"
        f"{human_size(total)}</th><th class=size>{total}</th></tr></tfoot></table>"
    )
    return out


def _branches(view: RepoView) -> list[str]:
    out = ["<h2>Branches</h2>"]
    if not view.branches:
        return [*out, "<p class=quiet>none yet</p>"]
    out.append("<table><thead><tr><th>branch</th><th>head</th><th>last commit</th></tr></thead>")
    for b in view.branches:
        default = " <span class=quiet>(default)</span>" if b.name == view.default_branch else ""
        out.append(
            f"<tr><td>{escape(b.name)}{default}</td><td><code>{escape(b.oid[:12])}</code></td>"
            f"<td>{escape(b.summary)} <span class=quiet>{escape(b.date)}</span></td></tr>"
        )
    out.append("</table>")
    return out


def _card(view: RepoView) -> list[str]:
    out = ["<h2>Model card</h2>"]
    if view.head is None or view.card_size is None:
        return [*out, "<p class=quiet>This repo has no README.md.</p>"]
    if view.card is None:
        url = escape(_resolve_url(view.repo_id, view.head.oid, "README.md"))
        return [
            *out,
            f"<p class=quiet>README.md is too large to show here ({human_size(view.card_size)}):"
            f' <a href="{url}">download it</a>.</p>',
        ]
    return [
        *out,
        f'<article class="card">{render_card(view.card, view.repo_id, view.head)}</article>',
    ]
