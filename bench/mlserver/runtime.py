"""MLServer custom runtime doing the same math in numpy (the peer in bench/peers.py)."""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class SoftmaxCrossEntropy(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        arrays = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        labels, logits = arrays["labels"], arrays["logits"]
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        loss = -(labels * log_p).sum(axis=-1)
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("loss", loss)]
        )
