"""/openapi.json tells the truth: `schemathesis run --checks all` with its default generation
(examples, coverage, fuzzing and stateful phases; positive and negative data) against a real
`qdkit serve` process finds nothing — no undocumented status or content type, no response off its
schema, no schema-valid request refused, no schema-violating one accepted, no 5xx. Bounded: a fixed
seed and --max-examples. The two request constraints JSON Schema cannot state (equally long stroke
arrays; N*784 pixel values) are applied to schema-valid cases by tests/_schemathesis_hooks.py.
The body limit is raised for the run: it is a deployment setting no JSON schema can carry."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from _oip import need
from _serving import running_server

TESTS = Path(__file__).resolve().parents[1]
SEED, MAX_EXAMPLES = 1, 5


def test_schemathesis_finds_nothing(model_path, tmp_path):
    need("schemathesis")
    cli = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which("schemathesis")
    assert cli, "the schemathesis command is not on PATH"
    env = dict(os.environ, SCHEMATHESIS_HOOKS="_schemathesis_hooks", NO_COLOR="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    with running_server(model_path, "--max-body-mb", "64", "--threads", "1") as server:
        run = subprocess.run(
            [
                cli,
                "run",
                f"{server.url}openapi.json",
                "--checks",
                "all",
                "--seed",
                str(SEED),
                "--max-examples",
                str(MAX_EXAMPLES),
                "--report-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        output = run.stdout + run.stderr
        assert server.proc.poll() is None, "the server died under schemathesis"
        server.stop()
        server_output = server.output()
    assert run.returncode == 0, output[-6000:]
    assert " passed" in output and "failed" not in output.split("SUMMARY")[-1], output[-3000:]
    assert "Traceback" not in server_output and "ERROR" not in server_output, server_output[-3000:]
