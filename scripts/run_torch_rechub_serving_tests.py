"""Run torch-rechub's own serving tests against rechub-serving, while another process holds Milvus open.

    python scripts/run_torch_rechub_serving_tests.py /path/to/torch-rechub/tests/test_serving.py [pytest args]

The test file is read from the user's torch-rechub checkout (it is not part of
this repository), copied into a temporary directory with its one import
changed (``from torch_rechub.serving import builder_factory`` becomes
``from rechub_serving import builder_factory``) and run with pytest. Before it
runs, a second process builds an embedded Milvus index, saves it, opens the
saved copy and keeps a temporary index open too, and holds both until the
tests end: the situation in which 0.1 failed every one of those Milvus tests
with ``DataDirLockedError``. Exit status: pytest's.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

OLD_IMPORT = "from torch_rechub.serving import builder_factory"
NEW_IMPORT = "from rechub_serving import builder_factory"

HOLDER = """
import sys, numpy as np
from rechub_serving import builder_factory, open_index
rng = np.random.default_rng(0)
vectors = rng.standard_normal((2000, 16)).astype("float32")
builder = builder_factory("milvus", metric="cosine")
with builder.from_embeddings(vectors) as index:
    index.save(sys.argv[1])
saved = open_index(sys.argv[1])
temporary = builder.from_embeddings(vectors)
assert saved.query(vectors[:3], 5).indices.shape == (3, 5)
print("holding", flush=True)
sys.stdin.read()  # until the parent closes our stdin
temporary.close()
saved.close()
"""


def main(argv: list[str]) -> int:
    if not argv or not Path(argv[0]).is_file():
        sys.stderr.write(__doc__ or "")
        return 2
    source = Path(argv[0]).read_text()
    if OLD_IMPORT not in source:
        sys.stderr.write(f"{argv[0]}: no line {OLD_IMPORT!r} to change; is it torch-rechub's tests/test_serving.py?\n")
        return 2
    with tempfile.TemporaryDirectory(prefix="trh-serving-") as tmp:
        test_file = Path(tmp) / "test_torch_rechub_serving.py"
        test_file.write_text(source.replace(OLD_IMPORT, NEW_IMPORT))
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(Path(tmp) / "held-index")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = holder.stdout.readline() if holder.stdout else ""
            if line.strip() != "holding":
                sys.stderr.write("the holder process failed to open an embedded Milvus index\n")
                return 1
            pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(test_file), *argv[1:]]
            return subprocess.call(pytest, cwd=tmp)
        finally:
            if holder.stdin:
                holder.stdin.close()
            holder.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
