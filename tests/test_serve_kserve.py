"""qdkit serve through the KServe SDK's clients: InferenceRESTClient (v2, JSON and binary tensors)
and InferenceGRPCClient, every answer equal to the Predictor's. kserve is an extra of its own
(`pip install -e '.[kserve]'`: it pulls in kubernetes, pandas and more), so without it these are
skipped, loudly."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from _oip import classification, grpc_address, need, oip_server, pixels


@pytest.fixture(scope="module")
def kserve():
    return need("kserve", extra="kserve")


@pytest.fixture(scope="module")
def server(model_path, kserve):
    with oip_server(model_path) as s:
        yield s


def _request(kserve, px: np.ndarray, binary: bool, outputs=None):
    inp = kserve.InferInput("pixels", list(px.shape), "UINT8")
    inp.set_data_from_numpy(px, binary_data=binary)
    return kserve.InferRequest(model_name="qdkit", infer_inputs=[inp], request_id="k1", request_outputs=outputs)


def _outputs(response) -> dict[str, np.ndarray]:
    return {o.name: o.as_numpy() for o in response.outputs}


def test_kserve_rest_client(server, kserve, predictor):
    from kserve.protocol.infer_type import RequestedOutput

    px = pixels(4, seed=31)
    logits, probs = predictor.logits_and_proba(px)
    base = server.url.rstrip("/")

    async def run() -> None:
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2"))
        try:
            assert await client.is_server_live(base) and await client.is_server_ready(base)
            assert await client.is_model_ready(base, "qdkit")
            for binary in (False, True):
                out = _outputs(await client.infer(base, _request(kserve, px, binary), model_name="qdkit"))
                np.testing.assert_array_equal(out["logits"], logits)
                np.testing.assert_array_equal(out["probabilities"], probs)
            wanted = [
                RequestedOutput("probabilities", parameters={"binary_data": True}),
                RequestedOutput("logits", parameters={"classification": 2}),
            ]
            response = await client.infer(base, _request(kserve, px, True, wanted), model_name="qdkit")
            out = _outputs(response)
            np.testing.assert_array_equal(out["probabilities"], probs)
            best = np.argsort(-logits, axis=1, kind="stable")[:, :2]
            assert [[str(s.decode() if isinstance(s, bytes) else s) for s in row] for row in out["logits"]] == [
                [f"{float(logits[r, i]):f}:{i}" for i in best[r]] for r in range(len(px))
            ]
        finally:
            await client.close()

    asyncio.run(run())


def test_kserve_grpc_client(server, kserve, predictor):
    from kserve.protocol.infer_type import RequestedOutput

    px = pixels(3, seed=32)
    logits, probs = predictor.logits_and_proba(px)

    async def run() -> None:
        client = kserve.InferenceGRPCClient(url=grpc_address(server))
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("qdkit")
            out = _outputs(await client.infer(_request(kserve, px, True)))
            np.testing.assert_array_equal(out["logits"], logits)
            np.testing.assert_array_equal(out["probabilities"], probs)
            wanted = [RequestedOutput("probabilities", parameters={"classification": 3})]
            top = _outputs(await client.infer(_request(kserve, px, True, wanted)))["probabilities"]
            assert [[s.decode() if isinstance(s, bytes) else s for s in row] for row in top] == classification(
                predictor, probs, 3
            )
        finally:
            await client.close()

    asyncio.run(run())
