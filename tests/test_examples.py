"""The examples run as a user would run them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--repo", str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "", "PYTHONPATH": str(ROOT), "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "latency=0.6 ran 0.59375 of the model" in result.stdout
    assert "per-row budgets ran [1.0, 0.75, 0.5]" in result.stdout
    assert (tmp_path / "repo" / "modeling_ada_llava.py").exists()
