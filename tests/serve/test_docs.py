"""The curl examples of docs/serving.md run against a real server and give what the page says."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.serve.conftest import ROOT

PAGE = ROOT / "docs" / "serving.md"
MARKER = "<!-- curl-test -->"


def curl_blocks(text: str) -> list[str]:
    """The ```bash blocks that follow the marker comment (blank lines in between allowed)."""
    blocks = []
    for match in re.finditer(re.escape(MARKER) + r"\s*\n```bash\n(.*?)\n```", text, flags=re.DOTALL):
        blocks.append(match.group(1))
    return blocks


def test_the_page_has_curl_examples():
    blocks = curl_blocks(PAGE.read_text())
    assert len(blocks) >= 3 and all("curl" in b for b in blocks)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_examples_run(start_server, model_a):
    server = start_server(model_a)
    outputs = []
    for block in curl_blocks(PAGE.read_text()):
        script = block.replace("http://127.0.0.1:8000", server.url)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{block}\n{done.stderr}"
        outputs.append(done.stdout)
    one = json.loads(outputs[0])
    assert len(one["results"]) == 1 and len(one["results"][0]["ids"]) == 5 and one["generation"] == 1
    several = json.loads(outputs[1])
    assert [len(r["ids"]) for r in several["results"]] == [3, 3]
    assert not {5, 6, 7, 10, 11} & set(several["results"][0]["ids"])
    decoder, text = json.JSONDecoder(), outputs[2]
    error, end = decoder.raw_decode(text)  # curl prints no newline after a body
    info, end = decoder.raw_decode(text, end)
    assert error["error"]["field"] == "users[0].hist_movie_id[1]"
    assert info["generation"] == 1 and info["mode"] == "recommend"
    assert "rechub_serve_index_generation 1.0" in text[end:].splitlines()
    assert server.stop() == 0
