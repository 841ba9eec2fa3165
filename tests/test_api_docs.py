"""docs/python-api.md runs as written: its Python blocks, in order, as one script, on the
sample archive (`memscore sample`) made in a temporary folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "python-api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_doc_has_the_example():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 5
    code = "\n".join(blocks)
    for call in ("memscore.load_model(", "memscore.score(", "memscore.sql(", "memscore.analyze("):
        assert call in code


@pytest.mark.slow
def test_python_api_doc_runs_end_to_end(tmp_path):
    from memscore.flows.sample_cli import write_sample

    written = write_sample(tmp_path / "sample-images")
    # The human data the example stands for: a hit rate per sample image (made up, a
    # fixed order unrelated to the scores).
    rows = [f"{p.relative_to(tmp_path / 'sample-images').as_posix()},{0.35 + 0.05 * i:.2f}"
            for i, p in enumerate(sorted(written))]
    (tmp_path / "human.csv").write_text("path,hit_rate\n" + "\n".join(rows) + "\n")
    script = tmp_path / "example.py"
    # As the doc says for scripts: under a main guard (DataLoader workers import the script again).
    body = "\n\n".join(python_blocks(DOC.read_text()))
    script.write_text("def main():\n" + textwrap.indent(body, "    ") + "\n\nif __name__ == '__main__':\n    main()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    print(done.stdout)  # shown with pytest -s: the example's output
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert "memscore.Model('resmem'" in out
    assert re.search(r"^0\.\d{3}  sample-images/", out, flags=re.M)  # a score per photo
    assert "{'fc11': (3, 256), 'resnet152': (3, 1000)}" in out  # the three .jpg photos
    assert "(9, 256)" in out  # the archive's fc11 vectors
    assert "\n0 9\n" in out  # the rerun: scored 0, skipped 9
    assert "n=9  Spearman rho=" in out
    assert "memscore: error: source not found: no-such-folder" in out
    assert (tmp_path / "sample-scores" / "scores").is_dir()
    assert not (tmp_path / "broken.jpg").exists()
