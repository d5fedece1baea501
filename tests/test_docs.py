"""The Python code blocks of README.md and docs/*.md run, so the docs cannot go stale.

One test per ```` ```python ```` block, ``(file, block index)``. The blocks of a file share one
namespace and run in order, as a reader would paste them: a test runs the blocks before its own
first if they have not run yet (for ``-k`` selections). Each file runs in its own temporary
working directory; the suite's one torch thread applies.

A block that cannot run here (it needs real data, the network, or minutes) is skipped by an
HTML comment on the line right before its fence, which names the reason::

    <!-- docs-test: skip (needs CIFAR-100) -->

(docs/index.md documents the convention.)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->\s*$")
_FENCE = re.compile(r"^```python\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    index: int  # among the file's python blocks, from 0
    line: int  # of the first code line, 1-based
    code: str
    skip: str | None  # the reason, or None


def python_blocks(path: Path) -> list[Block]:
    """The ```` ```python ```` blocks of a markdown file, with their skip markers."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if not _FENCE.match(lines[i]):
            i += 1
            continue
        prev = lines[i - 1].strip() if i else ""
        m = _SKIP.match(prev)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{path.name}:{i + 1}: unclosed ```python block"
        code = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(path, len(blocks), i + 2, code, m["reason"] if m else None))
        i = end + 1
    return blocks


BLOCKS = [b for p in DOC_FILES for b in python_blocks(p)]


class _FileRun:
    """One markdown file's namespace, working directory and the blocks run so far."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.namespace: dict = {"__name__": "__docs__"}
        self.done = 0  # blocks [0, done) have run (or failed: see failed)
        self.failed: list[int] = []

    def run(self, block: Block) -> None:
        code = compile(block.code, f"{block.path.name}:{block.line}", "exec")
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            exec(code, self.namespace)
        except Exception as err:
            self.failed.append(block.index)
            raise AssertionError(
                f"{block.path.name} block {block.index} (line {block.line}) raised "
                f"{type(err).__name__}: {err}"
                + (
                    f" [earlier failed blocks of this file: {self.failed[:-1]}]"
                    if len(self.failed) > 1
                    else ""
                )
            ) from err
        finally:
            self.done = max(self.done, block.index + 1)
            os.chdir(cwd)


@pytest.fixture(scope="module")
def file_runs() -> dict[Path, _FileRun]:
    return {}


@pytest.mark.parametrize(
    "block", BLOCKS, ids=[f"{b.path.relative_to(REPO)}[{b.index}]" for b in BLOCKS]
)
def test_doc_block_runs(
    block: Block, file_runs: dict[Path, _FileRun], tmp_path_factory: pytest.TempPathFactory
) -> None:
    if block.skip is not None:
        pytest.skip(f"{block.path.name}:{block.line}: {block.skip}")
    if block.path not in file_runs:
        file_runs[block.path] = _FileRun(tmp_path_factory.mktemp(block.path.stem))
    run = file_runs[block.path]
    left_out = [  # the file's earlier blocks that a -k selection left out, in order
        b for b in BLOCKS if b.path == block.path and run.done <= b.index < block.index
    ]
    for earlier in left_out:
        if earlier.skip is None:
            run.run(earlier)
    run.run(block)


def test_collector_finds_blocks_and_skip_markers(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text(
        "text\n```python\na = 1\n```\n\n<!-- docs-test: skip (needs CIFAR-100) -->\n"
        "```python\nload()\n```\n```bash\nls\n```\n```python\nb = a + 1\n```\n"
    )
    blocks = python_blocks(md)
    assert [(b.index, b.line, b.code, b.skip) for b in blocks] == [
        (0, 3, "a = 1\n", None),
        (1, 8, "load()\n", "needs CIFAR-100"),
        (2, 14, "b = a + 1\n", None),
    ]
