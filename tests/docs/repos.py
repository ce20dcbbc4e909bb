"""Real git repositories on disk for the documentation tests."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

GIT_IDENTITY = ["-c", "user.name=Docgen Tests", "-c", "user.email=docgen-tests@example.com"]


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *GIT_IDENTITY, *args], check=True, capture_output=True, text=True)
    return proc.stdout


def make_repo(root: Path, files: Mapping[str, str]) -> Path:
    """Create a git work tree with ``files`` committed on ``main``."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


README = """\
# Demo

A demo project for documentation tests. Contact jane.doe@corp-mail.net or +44 20 7946 0958 for help.

## Usage

See [the guide](docs/guide.md) and [contributing](CONTRIBUTING.md) or [the site](https://demo.example.org).

```python
# a comment in a code block stays a comment
print("hi")
```
"""

CORE = '''\
"""Core engine of the demo.

More text about the engine.
"""

from abc import ABCMeta


class Base:
    """A base."""


class Engine(Base, metaclass=ABCMeta):
    """Runs things.

    Args:
        name: The engine name.
    """

    def __init__(self, name: str = "e") -> None:
        self.name = name

    def run(self, steps: int = 3, *, label: str | None = None) -> list[str]:
        """Run the engine for ``steps`` steps."""
        return []

    async def fetch(self, url: str) -> bytes:
        """Fetch something."""
        return b""

    def _hidden(self) -> None:
        """Private: not documented."""

    class Options:
        """Nested options."""

        def merge(self, other: "Engine.Options") -> "Engine.Options":
            return self


def build(x: int, /, y: float = 1.5, *args: str, flag: bool = False, **kw: object) -> Engine:
    """Build an engine."""
    return Engine()


def _private_helper() -> None:
    pass
'''

# Importing this module would fail and leave a trace; reading it with ast must do neither.
BOOM = '''\
"""A module that must never be imported by the generator."""

from pathlib import Path

Path(__file__).with_suffix(".imported").write_text("imported")
raise RuntimeError("imported!")


def survives(a: int) -> int:
    """Still documented."""
    return a
'''

DEMO_FILES: dict[str, str] = {
    "README.md": README,
    "pyproject.toml": '[project]\nname = "demo"\nversion = "1.2.3"\ndescription = "Demo package."\n',
    "CONTRIBUTING.md": "# Contributing\n\nOpen a pull request.\n",
    "docs/guide.md": "# User guide\n\nHow to use the demo.\n",
    "src/demo/__init__.py": '"""The demo package."""\n\n__all__ = ["VERSION"]\nVERSION = "1.2.3"\n',
    "src/demo/core.py": CORE,
    "src/demo/boom.py": BOOM,
    "src/demo/broken.py": "def oops(:\n    pass\n",
    "src/demo/escapes.py": 'PATTERN = "\\d+"\n\n\ndef match() -> None:\n    """Uses an odd escape."""\n',
    "web/app.js": "console.log('hi')\n",
}
