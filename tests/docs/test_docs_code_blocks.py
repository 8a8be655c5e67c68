"""Every ```python block of the docs and the README runs, so the docs cannot drift from the code.

Blocks of one page run in order in one shared namespace, in a fresh temporary
directory. A block preceded by the HTML comment ``<!-- skip-test -->`` (blank
lines in between allowed) is not run: use it for fragments that need a server
or a file the reader has. A page whose block needs an optional library that is
not installed is skipped with the library's name.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_MARKER = "<!-- skip-test -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
OPTIONAL_MODULES = {"torch", "faiss", "annoy", "hnswlib", "pymilvus", "milvus_lite", "onnx", "onnxruntime", "pandas"}


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    code: str
    skipped: bool


def extract_blocks(text: str, page: str = "<page>") -> list[Block]:
    """The fenced python blocks of a markdown text, in order, with their skip flags."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent = match["fence"], match["indent"]
        lang = match["info"].strip().split(" ")[0].lstrip(".").lower() if match["info"].strip() else ""
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        if lang in ("python", "py", "python3"):
            body = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end])
            blocks.append(Block(page, i + 1, textwrap.dedent(body), _preceded_by_skip(lines, i)))
        i = end + 1
    return blocks


def _preceded_by_skip(lines: list[str], fence_index: int) -> bool:
    j = fence_index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return j >= 0 and lines[j].strip() == SKIP_MARKER


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


PAGES_WITH_CODE = [p for p in pages() if any(not b.skipped for b in extract_blocks(p.read_text(), page_id(p)))]


@pytest.mark.parametrize("path", PAGES_WITH_CODE, ids=page_id)
def test_page_code_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in extract_blocks(path.read_text(), page_id(path)):
        if block.skipped:
            continue
        where = f"{block.page}:{block.line}"
        try:
            exec(compile(block.code, where, "exec"), namespace)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in OPTIONAL_MODULES:
                pytest.skip(f"{where} needs the optional module {exc.name}, which is not installed")
            raise
        except Exception as exc:
            raise AssertionError(f"the python block at {where} failed: {type(exc).__name__}: {exc}") from exc
    for value in list(namespace.values()):  # close indexes a page left open (Milvus collections)
        close = getattr(value, "close", None)
        if callable(close) and type(value).__name__.endswith("Indexer"):
            close()


def test_readme_block_is_extracted() -> None:
    blocks = extract_blocks((ROOT / "README.md").read_text(), "README.md")
    assert any(not b.skipped and "builder_factory" in b.code for b in blocks)


def test_extractor_honours_skip_marker_and_indentation() -> None:
    text = (
        "intro\n\n```python\nx = 1\n```\n\n<!-- skip-test -->\n\n```python\nraise SystemExit\n```\n"
        "\n- item\n\n    ```py\n    y = x + 1\n    ```\n\n```bash\necho no\n```\n"
    )
    blocks = extract_blocks(text)
    assert [(b.code.strip(), b.skipped) for b in blocks] == [
        ("x = 1", False),
        ("raise SystemExit", True),
        ("y = x + 1", False),
    ]
