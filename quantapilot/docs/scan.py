"""Reading a repository for its documentation: which files count, package metadata, languages and guides.

The files come through :mod:`quantapilot.repos.files` (from the git objects of the documented commit, never
through the work tree); a file that is not read (a link, a file over the size cap, front matter over the YAML
limits) is remembered by :class:`Reader` with the reason, for the index page.
"""

from __future__ import annotations

import configparser
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from quantapilot.docs.markdown import first_paragraph, one_line
from quantapilot.docs.model import is_generated_text
from quantapilot.docs.render import FrontMatterError, FrontMatterRefusedError, split_front_matter
from quantapilot.repos.files import EntryKind, FileRefusedError, RepoFiles

# Folders never documented even when tracked: VCS metadata, virtualenvs, dependency and tool caches.
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "node_modules",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
    }
)
README_NAMES = ("README.md", "README.markdown", "README.rst", "README.txt", "README")
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})

LANGUAGES: dict[str, str] = {
    ".py": "Python",
    ".pyi": "Python",
    ".js": "JavaScript",
    ".mjs": "JavaScript",
    ".cjs": "JavaScript",
    ".jsx": "JavaScript",
    ".ts": "TypeScript",
    ".tsx": "TypeScript",
    ".go": "Go",
    ".rs": "Rust",
    ".java": "Java",
    ".kt": "Kotlin",
    ".rb": "Ruby",
    ".php": "PHP",
    ".c": "C",
    ".h": "C",
    ".cc": "C++",
    ".cpp": "C++",
    ".hpp": "C++",
    ".cs": "C#",
    ".swift": "Swift",
    ".scala": "Scala",
    ".sh": "Shell",
    ".bash": "Shell",
    ".md": "Markdown",
    ".markdown": "Markdown",
    ".rst": "reStructuredText",
    ".html": "HTML",
    ".css": "CSS",
    ".scss": "SCSS",
    ".sql": "SQL",
    ".yml": "YAML",
    ".yaml": "YAML",
    ".json": "JSON",
    ".toml": "TOML",
    ".ipynb": "Jupyter Notebook",
    ".r": "R",
    ".lua": "Lua",
    ".dart": "Dart",
    ".ex": "Elixir",
    ".exs": "Elixir",
    ".hs": "Haskell",
    ".vue": "Vue",
    ".tf": "HCL",
}
LANGUAGE_FILENAMES = {"Dockerfile": "Dockerfile", "Makefile": "Makefile"}


def _is_skipped(rel: str) -> bool:
    """Whether a path lies in a folder never documented (``SKIP_DIRS``)."""
    return any(part in SKIP_DIRS for part in rel.split("/")[:-1])


def listed_files(repo: RepoFiles) -> list[str]:
    """Tracked regular files and symbolic links (listed, never read); submodules have no files here."""
    return [p for p in repo.paths(EntryKind.FILE, EntryKind.SYMLINK) if not _is_skipped(p)]


class Reader:
    """Reads the repository's files as data and remembers the ones it left out, with the reason."""

    def __init__(self, repo: RepoFiles) -> None:
        self.repo = repo
        self.left_out: dict[str, str] = {}

    def text(self, rel: str) -> str | None:
        """The file's text (undecodable bytes replaced), or ``None`` when it is not read."""
        data = self.data(rel)
        return None if data is None else data.decode("utf-8", errors="replace")

    def data(self, rel: str) -> bytes | None:
        """The file's bytes, or ``None`` when it is not read (the reason goes to ``left_out``)."""
        try:
            return self.repo.read_bytes(rel)
        except FileRefusedError as exc:
            self.left_out[rel] = exc.reason
            return None


@dataclass(slots=True)
class Metadata:
    """Package name, description and version, and the file they came from."""

    name: str = ""
    description: str = ""
    version: str = ""
    source: str = ""


def _str(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def read_metadata(reader: Reader, files: set[str]) -> Metadata:
    """Package metadata from ``pyproject.toml``, ``setup.cfg`` or ``package.json``, the first that names the package."""
    meta = Metadata()
    # RecursionError: tomllib and json recurse per nesting level; a hostile file may nest thousands deep.
    if "pyproject.toml" in files and (toml_bytes := reader.data("pyproject.toml")) is not None:
        try:
            data = tomllib.loads(toml_bytes.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
            data = {}
        project = data.get("project")
        poetry = data.get("tool", {}).get("poetry") if isinstance(data.get("tool"), dict) else None
        for table in (project, poetry):
            if isinstance(table, dict) and _str(table.get("name")):
                return Metadata(
                    _str(table.get("name")),
                    _str(table.get("description")),
                    _str(table.get("version")),
                    "pyproject.toml",
                )
    if "setup.cfg" in files and (cfg_bytes := reader.data("setup.cfg")) is not None:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(cfg_bytes.decode("utf-8"))
        except (UnicodeDecodeError, configparser.Error):
            parser = configparser.ConfigParser(interpolation=None)
        section = dict(parser.items("metadata")) if parser.has_section("metadata") else {}
        if section.get("name", "").strip():
            return Metadata(
                section["name"].strip(),
                section.get("description", "").strip(),
                section.get("version", "").strip(),
                "setup.cfg",
            )
    if "package.json" in files and (json_bytes := reader.data("package.json")) is not None:
        try:
            pkg = json.loads(json_bytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            pkg = None
        if isinstance(pkg, dict) and _str(pkg.get("name")):
            return Metadata(
                _str(pkg.get("name")), _str(pkg.get("description")), _str(pkg.get("version")), "package.json"
            )
    return meta


def language_of(path: str) -> str | None:
    """The language of a file from its name or suffix, or ``None`` when it is not one counted."""
    name = path.rsplit("/", 1)[-1]
    if name in LANGUAGE_FILENAMES:
        return LANGUAGE_FILENAMES[name]
    return LANGUAGES.get(PurePosixPath(name).suffix.lower())


@dataclass(frozen=True, slots=True)
class Guide:
    """A Markdown document written by people: path, title and one-line summary."""

    path: str
    title: str
    summary: str


def _read_guide(rel: str, text: str) -> Guide:
    """Title and summary of a Markdown document (its front matter parsed once, within the YAML limits).

    Raises:
        FrontMatterRefusedError: The front matter is over a YAML limit (an alias bomb): the document is left out.
    """
    try:
        data, body = split_front_matter(text)
    except FrontMatterRefusedError:
        raise
    except FrontMatterError:
        data, body = {}, text
    title = data.get("title")
    if not (isinstance(title, str) and title.strip()):
        title = next(
            (m.group(1) for line in body.splitlines() if (m := re.match(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", line))),
            rel.rsplit("/", 1)[-1],
        )
    return Guide(rel, title.strip(), one_line(first_paragraph(body), 200))


def normalise_output_folder(output_folder: str) -> str:
    """The output folder as a clean relative path.

    Raises:
        ValueError: The folder is absolute, empty, climbs out with ``..`` or is a skipped folder (``.git``...).
    """
    folder = PurePosixPath(output_folder.strip().replace("\\", "/"))
    parts = [p for p in folder.parts if p not in ("", ".")]
    if folder.is_absolute() or not parts or ".." in parts or parts[0] in SKIP_DIRS:
        raise ValueError(f"output_folder must be a relative folder inside the repository, got {output_folder!r}")
    return "/".join(parts)


def read_readme(reader: Reader, files: set[str]) -> tuple[str, str] | None:
    """The first README found (in :data:`README_NAMES` order) and its text.

    Args:
        reader: The repository.
        files: The documented files.

    Returns:
        ``(path, text)``, or ``None`` when the repository has no readable README.
    """
    for name in README_NAMES:
        if name in files and (text := reader.text(name)) is not None:
            return name, text
    return None


def read_guides(reader: Reader, paths: Sequence[str]) -> list[Guide]:
    """The Markdown documents written by people, by path.

    Pages generated earlier are not guides; anything else in the output folder was written by people. A
    document whose front matter is over the YAML limits is left out and recorded on ``reader``.

    Args:
        reader: The repository.
        paths: Candidate files (the documented files and those in the output folder).

    Returns:
        The guides, sorted by path.
    """
    guides: list[Guide] = []
    for rel in paths:
        if PurePosixPath(rel).suffix.lower() not in MARKDOWN_SUFFIXES:
            continue
        text = reader.text(rel)
        if text is None or is_generated_text(text[:8192]):
            continue
        try:
            guides.append(_read_guide(rel, text))
        except FrontMatterRefusedError as exc:
            reader.left_out[rel] = str(exc)
    guides.sort(key=lambda g: g.path)
    return guides
