"""Run by tests/serve/test_serve_kserve.py in a process of its own: KServe's grpc_predict_v2.proto and
tritonclient's grpc_service.proto both define the `inference` package in protobuf's default
descriptor pool, so the two client libraries cannot be imported into one process (the pytest one
has tritonclient). Usage: python tests/_kserve_check.py MODEL HTTP_URL GRPC_ADDRESS"""

from __future__ import annotations

import asyncio
import sys

import kserve
import numpy as np
from _oip import classification, pixels
from kserve.protocol.infer_type import RequestedOutput

from qdkit.inference.predictor import Predictor


def _request(px: np.ndarray, binary: bool, outputs=None):
    inp = kserve.InferInput("pixels", list(px.shape), "UINT8")
    inp.set_data_from_numpy(px, binary_data=binary)
    return kserve.InferRequest(model_name="qdkit", infer_inputs=[inp], request_id="k1", request_outputs=outputs)


def _outputs(response) -> dict[str, np.ndarray]:
    return {o.name: o.as_numpy() for o in response.outputs}


def _text(row) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in row]


async def rest(predictor: Predictor, base: str) -> None:
    px = pixels(4, seed=31)
    logits, probs = predictor.logits_and_proba(px)
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2"))
    try:
        assert await client.is_server_live(base) and await client.is_server_ready(base)
        assert await client.is_model_ready(base, "qdkit")
        for binary in (False, True):
            out = _outputs(await client.infer(base, _request(px, binary), model_name="qdkit"))
            np.testing.assert_array_equal(out["logits"], logits)
            np.testing.assert_array_equal(out["probabilities"], probs)
        wanted = [
            RequestedOutput("probabilities", parameters={"binary_data": True}),
            RequestedOutput("logits", parameters={"classification": 2}),
        ]
        out = _outputs(await client.infer(base, _request(px, True, wanted), model_name="qdkit"))
        np.testing.assert_array_equal(out["probabilities"], probs)
        best = np.argsort(-logits, axis=1, kind="stable")[:, :2]
        assert [_text(row) for row in out["logits"]] == [
            [f"{float(logits[r, i]):f}:{i}" for i in best[r]] for r in range(len(px))
        ]
    finally:
        await client.close()
    print("kserve REST client: ok")


async def grpc(predictor: Predictor, address: str) -> None:
    px = pixels(3, seed=32)
    logits, probs = predictor.logits_and_proba(px)
    client = kserve.InferenceGRPCClient(url=address)
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("qdkit")
        out = _outputs(await client.infer(_request(px, True)))
        np.testing.assert_array_equal(out["logits"], logits)
        np.testing.assert_array_equal(out["probabilities"], probs)
        wanted = [RequestedOutput("probabilities", parameters={"classification": 3})]
        top = _outputs(await client.infer(_request(px, True, wanted)))["probabilities"]
        assert [_text(row) for row in top] == classification(predictor, probs, 3)
    finally:
        await client.close()
    print("kserve gRPC client: ok")


def main() -> int:
    model, url, address, which = sys.argv[1:5]
    predictor = Predictor(model, threads=1)
    asyncio.run(rest(predictor, url.rstrip("/")) if which == "rest" else grpc(predictor, address))
    return 0


if __name__ == "__main__":
    sys.exit(main())
