"""The cache of compiled templates and inlined emails: a run reuses what an earlier run
made, gets exactly what it would have made itself, and never fails because of the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from digest.core.rendering import Renderer
from digest.services.storage.cache import FileCache, cache_folder, inline_cache, template_cache
from tests.test_rendering import render_case

ROOT = Path(__file__).resolve().parent.parent

# One run of the renderer in a fresh interpreter, as each `digest` command is: the golden
# case rendered with the cache in the given folder; what it made and what it loaded.
RUN = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from digest.core.rendering import Renderer
from digest.services.storage.cache import cache_folder, inline_cache, template_cache
from tests.test_rendering import render_case
folder = cache_folder({folder!r})
renderer = Renderer(bytecode_cache=template_cache(folder), inline_cache=inline_cache(folder))
compiled = []
original = renderer.env.compile
renderer.env.compile = lambda *a, **k: compiled.append(1) or original(*a, **k)
rendered = render_case({case!r}, renderer)
print(json.dumps({{"html": rendered.html, "text": rendered.text, "compiled": len(compiled),
                  "premailer": "premailer" in sys.modules,
                  "cssutils": "cssutils" in sys.modules}}))
"""


def run(folder: Path | str, case: str = "basic") -> dict[str, object]:
    code = RUN.format(root=str(ROOT), folder=str(folder), case=case)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True, cwd=ROOT)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_second_run_reuses_compiled_templates_and_the_inlined_email(tmp_path: Path) -> None:
    first = run(tmp_path / "cache")
    again = run(tmp_path / "cache")
    uncached = run("off")
    assert first["compiled"] and first["premailer"]
    # The same email, byte for byte, without compiling a template or loading premailer.
    assert again["html"] == first["html"] == uncached["html"]
    assert again["text"] == first["text"] == uncached["text"]
    assert again["compiled"] == 0
    assert not again["premailer"] and not again["cssutils"]
    assert uncached["compiled"] and uncached["premailer"]


def test_other_content_is_inlined_afresh(tmp_path: Path) -> None:
    run(tmp_path / "cache", "basic")
    other = run(tmp_path / "cache", "parts")
    assert other["premailer"], "a different email must not come from the cache"
    assert other["html"] == run("off", "parts")["html"]


def test_a_damaged_cache_is_a_miss_never_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    good = run(folder)
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            path.write_bytes(data[:len(data) // 2])  # cut short, as a full disk would
    damaged = run(folder)
    assert damaged["html"] == good["html"]
    assert damaged["compiled"] and damaged["premailer"]
    # …and the entries are good again afterwards.
    assert run(folder)["compiled"] == 0


def test_an_edited_entry_is_never_mailed(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    good = run(folder)
    (entry,) = (folder / "inlined").iterdir()
    check, _, html = entry.read_text(encoding="utf-8").partition("\n")
    entry.write_text(f"{check}\n{html.replace('Syria', 'Sryia')}", encoding="utf-8")
    assert run(folder)["html"] == good["html"]


def test_a_folder_others_may_write_in_is_not_used(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    assert cache_folder(str(folder)) is None
    assert "others may write" in caplog.text
    assert cache_folder("off") is None
    assert cache_folder("OFF") is None
    mine = cache_folder(str(tmp_path / "mine"))
    assert mine is not None and (mine.stat().st_mode & 0o777) == 0o700
    # Nothing made inside the shared folder, and rendering works without a cache.
    assert list(folder.iterdir()) == []
    assert "Syria" in render_case("basic", Renderer(bytecode_cache=template_cache(None),
                                                    inline_cache=inline_cache(None))).html


def test_a_cache_that_cannot_be_made_means_no_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cache_folder(str(blocker / "cache")) is None
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "templates").write_text("in the way")
    (folder / "inlined").write_text("in the way")
    assert template_cache(folder) is None and inline_cache(folder) is None


def test_the_default_folder_is_the_users_cache(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder("") == tmp_path / "xdg" / "recap-digest"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_folder("") == tmp_path / "home" / ".cache" / "recap-digest"


def test_the_cache_keeps_at_most_its_limit(tmp_path: Path) -> None:
    cache = FileCache(tmp_path, limit=3)
    for i in range(6):
        cache.put(f"key {i}", f"value {i}")
        os.utime(next(p for p in tmp_path.iterdir() if p.read_text().endswith(f"value {i}")),
                 (i, i))
    assert len(list(tmp_path.glob("*.txt"))) == 3
    assert [cache.get(f"key {i}") for i in range(6)] == [None] * 3 + [f"value {i}"
                                                                    for i in range(3, 6)]
    assert not list(tmp_path.glob("*.tmp"))
