"""Model-written documentation pages: the answer's cleaning, the front matter marker, the lint."""

from __future__ import annotations

from quantapilot.docs.frontmatter import FrontMatter
from quantapilot.docs.lint import lint_pages
from quantapilot.docs.model_pages import clean_answer, grounding, model_page
from quantapilot.docs.pages import PageContext
from quantapilot.docs.render import split_front_matter
from quantapilot.llm.doc_prompts import build_doc_messages

CTX = PageContext("docs", "demo", "git-0123456789ab", "2026-01-02", ["quantapilot"])


def test_model_pages_answer_loses_fence_front_matter_and_title() -> None:
    answer = "```markdown\n---\ntitle: mine\ngenerator: other\n---\n# Demo\n\n## Parts\n\n# Loud\ntext\n```"
    assert clean_answer(answer) == "## Parts\n\n## Loud\ntext"
    assert clean_answer("## Already fine\n") == "## Already fine"


def test_model_pages_page_is_marked_generated_by_and_passes_lint() -> None:
    page = model_page(CTX, "architecture", model="arch-model", answer="## Parts\n\nMail ops@corp.io for help.\n")
    meta, body = split_front_matter(page.markdown)
    assert meta["generated_by"] == "arch-model" and meta["generator"] == "quantapilot-docgen"
    FrontMatter.model_validate(meta)
    assert page.path == "docs/model/architecture.md" and page.slug == "model/architecture"
    assert "ops@corp.io" not in body  # personal data scrubbed as on every generated page
    assert lint_pages([page]) == []


def test_model_pages_lint_refuses_a_blank_generated_by() -> None:
    page = model_page(CTX, "overview", model="arch-model", answer="## A\n")
    broken = page.model_copy(
        update={"markdown": page.markdown.replace("generated_by: arch-model", "generated_by: ' '")}
    )
    issues = lint_pages([broken])
    assert [i.field for i in issues] == ["generated_by"]


def test_model_pages_prompt_cuts_the_first_page_and_leaves_out_the_rest_past_the_limit() -> None:
    assert grounding([]) == {}
    material = {"index": "x" * 5000, "file-tree": "tree", "api/index": "api"}
    messages = build_doc_messages(project="demo", task="Write it.", material=material, total_bytes=4096)
    user = messages[1].content
    assert "### Page index" in user and "x" * 4096 in user and "x" * 4097 not in user
    assert "### Page file-tree" not in user and "*2 more generated pages were left out for length.*" in user


def test_model_pages_prompt_masks_secrets() -> None:
    material = {"index": "key: sk-secret-value-123", "file-tree": "tree"}
    messages = build_doc_messages(
        project="demo", task="Write it.", material=material, total_bytes=4096, secrets=["sk-secret-value-123"]
    )
    user = messages[1].content
    assert "### Page file-tree" in user and "sk-secret-value-123" not in user and "[redacted]" in user
