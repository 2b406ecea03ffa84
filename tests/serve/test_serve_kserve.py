"""qdkit serve through the KServe SDK's clients: InferenceRESTClient (v2, JSON and binary tensors,
classification) and InferenceGRPCClient, every answer equal to the Predictor's
(tests/_kserve_check.py, in a process of its own: kserve's and tritonclient's protobuf modules
cannot share one). kserve is an extra of its own (`pip install -e '.[kserve]'`: it pulls in
kubernetes, pandas and ~30 more packages; scripts/test.sh installs it), so without it these are
skipped, loudly, and under CI=true they fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _oip import grpc_address, need, oip_server

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(model_path):
    need("kserve", extra="kserve", load=False)  # importing it here would clash with tritonclient
    with oip_server(model_path) as s:
        yield s


@pytest.mark.parametrize("which", ["rest", "grpc"])
def test_kserve_clients(server, model_path, which):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    run = subprocess.run(
        [sys.executable, str(TESTS / "_kserve_check.py"), str(model_path), server.url, grpc_address(server), which],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "client: ok" in run.stdout
