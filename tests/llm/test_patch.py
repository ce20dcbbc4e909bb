"""A model's diff is hostile input: attacks on the worktree are refused before anything is written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from quantapilot.errors import ErrorCode
from quantapilot.runs.errors import StepError
from quantapilot.runs.patch import apply_diff, check_diff, extract_diff

GOOD = """\
diff --git a/calc.py b/calc.py
--- a/calc.py
+++ b/calc.py
@@ -1,2 +1,2 @@
 def add(a, b):
-    return a - b
+    return a + b
"""


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / "wt"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(["git", "add", "."], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init"], cwd=root, check=True)
    return root


def _check(text: str, root: Path, **kw):
    return check_diff(text, root, max_bytes=kw.get("max_bytes", 100_000), max_files=kw.get("max_files", 10))


async def test_patch_good_diff_from_a_fenced_answer_applies(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    answer = f"Here is the fix:\n\n```diff\n{GOOD}```\nDone."
    checked = _check(extract_diff(answer), root)
    assert checked.files == ("calc.py",)
    assert await apply_diff(checked, root) is None
    assert "a + b" in (root / "calc.py").read_text()
    assert not list(tmp_path.glob("*.patch"))


async def test_patch_that_does_not_apply_is_an_answer_for_the_model(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    wrong = GOOD.replace("return a - b", "return a * b")
    reason = await apply_diff(_check(wrong, root), root)
    assert reason and "calc.py" in reason
    assert "a - b" in (root / "calc.py").read_text()


def _new_file(path: str, body: str = "x") -> str:
    return f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+{body}\n"


@pytest.mark.parametrize(
    "diff",
    [
        _new_file("../escaped.txt"),
        _new_file("sub/../../escaped.txt"),
        _new_file("/tmp/escaped.txt"),
        _new_file(".git/hooks/post-checkout"),
        _new_file("x/.GIT/config"),
        _new_file("a\\..\\b"),
        "--- a/calc.py\n+++ ../outside.py\n@@ -1 +1 @@\n-x\n+y\n",
        "diff --git a/calc.py b/calc.py\nrename from calc.py\nrename to ../calc.py\n",
        "diff --git a/l b/l\nnew file mode 120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+/etc/passwd\n",
        "diff --git a/m b/m\nnew file mode 160000\n--- /dev/null\n+++ b/m\n@@ -0,0 +1 @@\n+Subproject commit 0\n",
        "diff --git a/b.bin b/b.bin\nGIT binary patch\nliteral 1\nIc${\n",
        "no diff here\n",
    ],
)
async def test_patch_attack_refused(tmp_path: Path, diff: str) -> None:
    root = _repo(tmp_path)
    with pytest.raises(StepError) as err:
        _check(diff, root)
    assert err.value.code == ErrorCode.MODEL_DIFF_REJECTED and not err.value.retryable
    assert not (tmp_path / "escaped.txt").exists()


async def test_patch_through_a_symlink_out_of_the_worktree_refused(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(StepError) as err:
        _check(_new_file("link/planted.txt"), root)
    assert "symbolic link" in err.value.message
    assert not (outside / "planted.txt").exists()


async def test_patch_huge_or_wide_diff_refused(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    huge = _new_file("big.txt", "y" * 200_000)
    with pytest.raises(StepError, match="bytes"):
        _check(huge, root)
    wide = "".join(_new_file(f"f{i}.txt") for i in range(11))
    with pytest.raises(StepError, match="files"):
        _check(wide, root)


async def test_patch_header_hidden_in_a_lying_hunk_is_caught_by_gits_own_reading(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    # Our parse takes the second header as content of a hunk that claims 3 lines; git counts for itself.
    sneaky = (
        "diff --git a/ok.txt b/ok.txt\nnew file mode 100644\n--- /dev/null\n+++ b/ok.txt\n@@ -0,0 +1,3 @@\n+a\n"
        "diff --git a/.git/config b/.git/config\n--- a/.git/config\n+++ b/.git/config\n@@ -1 +1 @@\n-x\n+y\n"
    )
    checked = _check(sneaky, root)  # passes the header parse...
    config_before = (root / ".git" / "config").read_text()
    reason = await apply_diff(checked, root)
    assert reason is not None and "corrupt patch" in reason  # ...and git refuses to read it as a valid patch
    assert (root / ".git" / "config").read_text() == config_before
    assert not (root / "ok.txt").exists()
