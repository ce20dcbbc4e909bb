"""The prompts of model-written documentation pages (``models.arch``), grounded in the generated pages.

The model is shown only what the deterministic generator extracted from the repository (its overview with the
README, the file tree, the API reference and, while they fit, module pages), never a setting or credential of the
service; any text equal to a secret the caller passes is masked, as in milestone prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from quantapilot.llm.prompts import mask
from quantapilot.llm.provider import ChatMessage

SYSTEM_DOCS = (
    "You are the architecture agent of an automated software factory. You write one page of a project's "
    "documentation in Markdown, using only the material you are given: pages generated from the repository "
    "(overview and README, file tree, API reference). Do not invent modules, files, functions or behaviour that "
    "the material does not show; when it does not say, say that it does not. Answer with the page's body only: no "
    "front matter, no title heading (start with a ## section), no code fence around the whole answer."
)


def build_doc_messages(
    *,
    project: str,
    task: str,
    material: Mapping[str, str],
    total_bytes: int,
    secrets: Iterable[str] = (),
) -> list[ChatMessage]:
    """The system and user messages of one documentation page call.

    Args:
        project: The project's name.
        task: What the page is to say (:data:`quantapilot.docs.model_pages.MODEL_PAGES`).
        material: Generated page slug -> its text, in the order to show them (the first ones always go in).
        total_bytes: Characters of material at most; a page that would pass it is left out, and so are the rest.
        secrets: Values to mask wherever they appear.
    """
    parts = [f"# Documentation page for {project}", "", "## Task", task, "", "## Generated pages"]
    left = total_bytes
    for shown, (slug, text) in enumerate(material.items()):
        if len(text) > left and shown >= 1:
            parts += ["", f"*{len(material) - shown} more generated pages were left out for length.*"]
            break
        # The first page (the overview with the README) always goes in, cut to the limit if need be.
        text = text[:left]
        left -= len(text)
        parts += ["", f"### Page {slug}", "", text.strip()]
    user = mask("\n".join(parts), secrets)
    return [ChatMessage(role="system", content=SYSTEM_DOCS), ChatMessage(role="user", content=user)]
