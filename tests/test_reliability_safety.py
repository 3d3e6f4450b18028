"""Safe defaults: model files never execute code, and no secret lives in the repository.
(Path escapes: tests/test_foundation.py; SQL access: tests/test_query.py; trigger params:
tests/test_dag.py.)"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
from pathlib import Path

import pytest
import torch

from crossrec_core.model_store import ModelFileError, read_state_dict

REPO = Path(__file__).resolve().parent.parent


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_model_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    if writer == "pickle":
        path.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    else:
        torch.save({"weight": Payload(marker)}, path)
    with pytest.raises(ModelFileError, match=r"model\.pt is corrupt or truncated"):
        read_state_dict(path)
    assert not marker.exists()


SECRET_PATTERNS = {
    "AWS access key": re.compile(r"AKIA[0-9A-Z]{16}"),
    "private key": re.compile(r"-----BEGIN (RSA |EC |OPENSSH )?PRIVATE KEY-----"),
    "password assignment": re.compile(r"(?i)\w*(password|passwd|secret|token|api_key)\w*\s*[:=]\s*['\"][^'\"\s$]{6,}['\"]"),
    "credentials in a URL": re.compile(r"://[A-Za-z0-9_.-]+:[^@\s${}/]{4,}@"),
}


def test_no_tracked_file_holds_a_secret():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert "docker/.env" not in files
    found = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.stat().st_size > 2_000_000 or path.suffix in (".png", ".parquet"):
            continue
        text = path.read_text(errors="ignore")
        found += [f"{name}: {label}" for label, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
    assert found == []


def test_the_secret_scan_finds_a_planted_secret():
    # assembled at run time, so that this file itself stays clean for the scan above
    planted = "db_pass" + 'word = "hunter2hunter2"\n' + "url = postgresql://airflow:" + "s3cr3tpw@db/airflow\n"
    assert sum(bool(p.search(planted)) for p in SECRET_PATTERNS.values()) == 2
