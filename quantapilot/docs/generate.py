"""Deterministic Markdown documentation of a repository, read from its files and never by importing its code.

:func:`generate_docs` produces these pages (slugs; files under the output folder, ``docs`` by default):

* ``index``: overview from the README and the package metadata (``pyproject.toml``, ``setup.cfg``,
  ``package.json``), language counts, links to the other pages, the Python files that failed to parse and the
  files not read (symbolic links, files over the size cap, front matter over the YAML limits), with the reason;
* ``file-tree``: the tracked files as a tree (capped for huge repositories, with a note);
* ``guides``: the repository's own Markdown documents (written by people), each linked with its summary;
* ``api/index`` and one ``api/<module>`` page per Python module: module docstring, classes with their bases,
  methods and functions with full signatures and docstrings, read with :mod:`ast`.

The repository's files are read as data through :mod:`quantapilot.repos.files` (from the git objects of the
documented commit, never through the work tree), and written back through :mod:`quantapilot.repos.worktree`:
no link is ever followed. The same input always gives byte-identical pages: traversal is sorted and the only
date is the ``updated`` argument. Text taken from the repository goes through
:func:`~quantapilot.docs.lint.scrub_personal_data`. Every page carries ``generator: quantapilot-docgen`` in its
front matter; :func:`~quantapilot.docs.write.write_pages` overwrites or removes only files carrying that marker.

This module composes the others: :mod:`~quantapilot.docs.scan` reads the repository,
:mod:`~quantapilot.docs.pyapi` the Python API, :mod:`~quantapilot.docs.pages` builds the pages (with
:mod:`~quantapilot.docs.markdown`), :mod:`~quantapilot.docs.write` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quantapilot.docs.model import GeneratedPage
from quantapilot.docs.pages import (
    PageContext,
    api_index_page,
    assign_module_slugs,
    guides_page,
    index_page,
    module_page,
    tree_page,
)
from quantapilot.docs.pyapi import read_modules
from quantapilot.docs.scan import (
    SKIP_DIRS,
    Reader,
    listed_files,
    normalise_output_folder,
    read_guides,
    read_metadata,
    read_readme,
)
from quantapilot.repos.files import MAX_FILE_BYTES, open_repo_files

DEFAULT_OWNERS: tuple[str, ...] = ("quantapilot",)


def generate_docs(
    repo_dir: Path,
    *,
    output_folder: str = "docs",
    project: str,
    version: str,
    updated: str,
    owners: Sequence[str] = DEFAULT_OWNERS,
    commit: str | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> list[GeneratedPage]:
    """Generate the documentation pages of a repository.

    Nothing from the repository is imported or executed: Python modules are read with :mod:`ast`, metadata
    files are parsed as data. The files are read from the git objects of ``commit`` (never through the work
    tree, see :mod:`quantapilot.repos.files`): a tracked symbolic link is listed in the file tree but never
    followed, a file over ``max_file_bytes`` is not read, and a Markdown document whose front matter is over
    the YAML limits is left out. The index page lists those files with the reason, and the files that failed to
    parse.

    Args:
        repo_dir: The repository's work tree (or a plain directory, read without following links).
        output_folder: Folder (relative to the root) the pages belong to; it is left out of the file tree.
        project: Project name shown on the pages.
        version: Version label written to every page's front matter (a release or a short commit label).
        updated: Date (``YYYY-MM-DD``) or RFC 3339 timestamp for the front matter; the only date written.
        owners: Owners for the front matter; must not be empty.
        commit: The commit to document (default ``HEAD``).
        max_file_bytes: Largest file read.

    Returns:
        The pages: ``index``, ``file-tree``, ``guides``, ``api/index``, then ``api/<module>`` by module name.

    Raises:
        ValueError: Empty ``project``/``version``/``owners`` or an output folder outside the repository.
        RepoReadError: git could not read the commit.
    """
    owner_list = [o.strip() for o in owners if o.strip()]
    if not owner_list:
        raise ValueError("owners must not be empty")
    if not project.strip() or not version.strip() or not updated.strip():
        raise ValueError("project, version and updated must not be empty")
    out = normalise_output_folder(output_folder)
    ctx = PageContext(out, project.strip(), version.strip(), updated.strip(), owner_list)
    with open_repo_files(
        Path(repo_dir), commit=commit, max_file_bytes=max_file_bytes, skip_dirs=frozenset(SKIP_DIRS)
    ) as repo:
        return _generate(ctx, Reader(repo))


def _generate(ctx: PageContext, reader: Reader) -> list[GeneratedPage]:
    out = ctx.out
    all_files = listed_files(reader.repo)
    in_output = [f for f in all_files if f.startswith(out + "/")]
    files = [f for f in all_files if not f.startswith(out + "/")]
    file_set = set(files)

    # The order of the reads is the order files are recorded as left out; the index sorts them anyway.
    meta = read_metadata(reader, file_set)
    readme = read_readme(reader, file_set)
    guides = read_guides(reader, [*files, *in_output])
    modules, failed = read_modules(reader, files)
    assign_module_slugs(modules)
    by_name = {m.name: m for m in modules}

    pages = [
        index_page(
            ctx,
            files=files,
            meta=meta,
            readme=readme,
            modules=modules,
            failed=failed,
            guides=[g.path for g in guides],
            left_out=sorted(reader.left_out.items()),
        ),
        tree_page(ctx, files),
        guides_page(ctx, guides),
        api_index_page(ctx, modules, failed),
    ]
    for i, module in enumerate(modules):
        parent = by_name.get(module.name.rpartition(".")[0]) if "." in module.name else None
        nxt = modules[i + 1] if i + 1 < len(modules) else None
        pages.append(module_page(ctx, module, parent=parent, next_module=nxt))
    return pages
