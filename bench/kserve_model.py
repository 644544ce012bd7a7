"""KServe 0.21 model server doing the same math in numpy (the peer in bench/servers.py).

Run by .venv-kserve/bin/python (make test and make bench-peers build it): KServe pins
packages of its own (protobuf, FastAPI, uvicorn), so it cannot share the service's venv.
"""

import argparse

import kserve
import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse


class SoftmaxCrossEntropy(kserve.Model):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__("softmax_cross_entropy_with_logits")
        self.ready = True

    async def predict(self, payload: InferRequest, headers: object = None) -> InferResponse:
        labels = payload.get_input_by_name("labels").as_numpy()
        logits = payload.get_input_by_name("logits").as_numpy()
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        loss = -(labels * log_p).sum(axis=-1)
        output = InferOutput(name="loss", shape=list(loss.shape), datatype="FP32")
        output.set_data_from_numpy(loss, binary_data=False)
        response_id = payload.id or "0"
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=response_id)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    args, _ = parser.parse_known_args()
    kserve.ModelServer(http_port=args.http_port, enable_grpc=False, workers=1).start(
        [SoftmaxCrossEntropy()]
    )
