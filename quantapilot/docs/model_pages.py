"""Model-written documentation pages (``models.arch``): an overview and an architecture page beside the generated ones.

The deterministic generator (:mod:`quantapilot.docs.generate`) stays the source of truth: the model is shown what it
extracted (the overview with the README, the file tree, the API reference) and asked for prose grounded in it. Its
answer becomes a page like the others (front matter, "Related pages", personal data scrubbed, doc lint), marked
``generated_by: <model>`` in the front matter so readers and tools can tell it from the extracted pages. The
pages also carry the generator's marker, so a later run that no longer asks a model removes them as stale.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from quantapilot.docs.model import GeneratedPage
from quantapilot.docs.pages import PageContext, build_page, fixed_link
from quantapilot.docs.render import find_front_matter

ModelPageKind = Literal["overview", "architecture"]

#: The pages the model is shown, in this order (slugs of the deterministic generator).
GROUNDING_SLUGS = ("index", "file-tree", "api/index")
#: Module pages follow while they fit the prompt.
MODULE_PREFIX = "api/"


@dataclass(frozen=True, slots=True)
class ModelPageSpec:
    """What one model-written page is: its slug, title and what the model is asked to write."""

    kind: ModelPageKind
    slug: str
    title: str
    task: str


MODEL_PAGES: dict[ModelPageKind, ModelPageSpec] = {
    "overview": ModelPageSpec(
        kind="overview",
        slug="model/overview",
        title="Overview (model-written)",
        task=(
            "Write an overview of the project for a new contributor: what it is for, its main parts and how they "
            "fit together, and where to start reading. Use sections (##) and short paragraphs."
        ),
    ),
    "architecture": ModelPageSpec(
        kind="architecture",
        slug="model/architecture",
        title="Architecture (model-written)",
        task=(
            "Describe the project's architecture: its components (packages and modules), their responsibilities, "
            "the dependencies and data flow between them, and the extension points. Use sections (##), and name "
            "modules and files exactly as the material spells them."
        ),
    ),
}

_FENCE_RE = re.compile(r"\A```[A-Za-z0-9_-]*[ \t]*\n(?P<body>.*?)\n```[ \t]*\Z", re.DOTALL)


def body_of(markdown: str) -> str:
    """A generated page's text without its front matter block."""
    _raw, body = find_front_matter(markdown)
    return body


def grounding(pages: Sequence[GeneratedPage]) -> dict[str, str]:
    """The material the model is shown: slug -> page text (no front matter), the fixed pages first, then modules."""
    by_slug = {p.slug: p for p in pages}
    chosen = {s: body_of(by_slug[s].markdown) for s in GROUNDING_SLUGS if s in by_slug}
    for page in pages:
        if page.slug.startswith(MODULE_PREFIX) and page.slug not in chosen:
            chosen[page.slug] = body_of(page.markdown)
    return chosen


def clean_answer(text: str) -> str:
    """The model's answer as a page body: without a wrapping code fence, a front matter block or a top heading.

    The page gets its own title, front matter and related links; a model that adds them would duplicate or,
    for front matter, override them.
    """
    text = text.strip().replace("\r\n", "\n")
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group("body").strip()
    if text.startswith("---"):
        _raw, text = find_front_matter(text)
        text = text.strip()
    lines = text.split("\n")
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    # A heading level 1 inside would compete with the page's title: demote it.
    return "\n".join("#" + line if line.startswith("# ") else line for line in lines).strip()


def model_page(ctx: PageContext, kind: ModelPageKind, *, model: str, answer: str) -> GeneratedPage:
    """The page of one model answer, marked ``generated_by: <model>``.

    Args:
        ctx: The context of the generation the page joins (output folder, project, version, date, owners).
        kind: ``overview`` or ``architecture``.
        model: The model that answered (as the provider named it).
        answer: Its answer.
    """
    spec = MODEL_PAGES[kind]
    body = [
        f"# {spec.title}",
        "",
        f"> Written by the model `{model}` from the generated pages of this documentation (overview, file tree, "
        "API reference). Those pages are extracted from the repository; where this page disagrees, they are right.",
        "",
        clean_answer(answer) or "*The model gave no text.*",
        "",
    ]
    return build_page(
        ctx,
        slug=spec.slug,
        title=f"{ctx.project}: {spec.title}",
        description=f"{spec.title.split(' (')[0]} of {ctx.project}, written by {model} from the generated pages.",
        body=body,
        related=[
            fixed_link("index", "prerequisite"),
            fixed_link("file-tree", "related"),
            fixed_link("api/index", "related"),
        ],
        tags=["generated", kind],
        generated_by=model,
    )


def model_pages(ctx: PageContext, answers: Mapping[ModelPageKind, tuple[str, str]]) -> list[GeneratedPage]:
    """The pages of the answers (kind -> (model, answer)), in the order of :data:`MODEL_PAGES`."""
    return [model_page(ctx, k, model=answers[k][0], answer=answers[k][1]) for k in MODEL_PAGES if k in answers]
