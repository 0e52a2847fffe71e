"""The README's main job, end to end on the real all-MiniLM-L6-v2."""

import re

from conftest import require
from jaxslim.cli.demo import main


def test_demo_matches_pytorch_on_real_sentences(minilm_dir, capsys):
    require("torch")
    assert main(["--model-dir", str(minilm_dir)]) == 0
    out = capsys.readouterr().out
    found = re.search(r"max abs diff ([0-9.e+-]+)\s+max rel diff", out)
    assert found, out
    assert float(found.group(1)) <= 1e-4
    # paraphrases are closer than unrelated sentences
    rows = [
        [float(v) for v in line.split()[:5]]
        for line in out.splitlines()
        if re.match(r"^\s+-?\d\.\d\d\s", line)
    ]
    assert rows[0][1] > 0.5 > rows[0][2]
