"""What v1 and v2 share once a request is parsed: tensors still to decode, the class
dimension, the cost of a call (for admission) and the engine call itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from service.api import metrics
from service.api.pipeline import Cost
from service.api.stages import CURRENT, now
from service.codecs.json_tensor import Pending
from service.engine.engine import Engine, LossResult
from service.engine.types import DEFAULT_OPTIONS, SPARSE_OP, WEIGHT_INPUTS, DType, Options
from service.errors import InvalidArgument, UnsupportedDtype

# Bytes a JSON output element may take as text (float64's longest shortest form is 24
# characters, a separator, brackets around tiny rows: 28) twice over, since the encoder
# holds its blocks and their join at once (json_tensor.encode_fragment).
JSON_BYTES_PER_ELEMENT = 56


Tensor = np.ndarray | Pending


def class_dim(dim: object, axis: object) -> int:
    """`dim`, else TensorFlow 2's `axis`, else -1; both given and different is an error."""
    if dim is not None and axis is not None and dim != axis:
        raise InvalidArgument(f"dim ({dim}) and axis ({axis}) disagree; give one")
    value = dim if dim is not None else axis if axis is not None else -1
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"dim must be an integer; got {value!r}")
    return value


def _spec(name: str, tensor: Tensor) -> tuple[tuple[int, ...], DType]:
    if isinstance(tensor, Pending):
        return tensor.shape, tensor.dtype
    dtype = DType.of(tensor)
    if dtype is None:
        raise UnsupportedDtype(f"{name} has dtype {tensor.dtype}, which is not supported")
    return tensor.shape, dtype


def cost_of(
    engine: Engine,
    op: str,
    tensors: Mapping[str, Tensor],
    *,
    outputs: Sequence[str],
    dim: int,
    options: Options = DEFAULT_OPTIONS,
    json_outputs: bool,
) -> Cost:
    """What `compute` and encoding will hold, from shapes and dtypes; 422 for arguments the
    engine would refuse, before anything is allocated."""
    specs = {name: _spec(name, tensor) for name, tensor in tensors.items()}
    timeline = CURRENT.get()
    if timeline is not None and timeline.traced:  # for the stage spans' attributes
        timeline.inputs = {n: (shape, dtype.name) for n, (shape, dtype) in specs.items()}
    plan = engine.plan(
        op,
        labels=specs["labels"],
        logits=specs["logits"],
        grad_loss=specs.get("grad_loss"),
        class_weights=specs.get("class_weights"),
        sample_weights=specs.get("sample_weights"),
        outputs=outputs,
        dim=dim,
        options=options,
    )
    decoded = sum(t.tensor.decode_cost(t.dtype) for t in tensors.values() if isinstance(t, Pending))
    itemsize = specs["logits"][1].numpy.itemsize
    encoded = plan.output_bytes // itemsize * JSON_BYTES_PER_ELEMENT if json_outputs else 0
    return Cost(decoded + plan.output_bytes + plan.work_bytes + encoded, plan.elements)


def compute(
    engine: Engine,
    op: str,
    tensors: Mapping[str, Tensor],
    *,
    outputs: Sequence[str],
    dim: int = -1,
    options: Options = DEFAULT_OPTIONS,
) -> LossResult:
    """Decode pending tensors, run `op` (labels, logits, optional grad_loss, class_weights,
    sample_weights); the two stages are marked on the request's timeline (stages.py), and
    the engine's time is recorded for /metrics."""
    arrays = {n: t.decode() if isinstance(t, Pending) else t for n, t in tensors.items()}
    call = engine.sparse_softmax_cross_entropy if op == SPARSE_OP else engine.softmax_cross_entropy
    decoded = now()
    result = call(
        labels=arrays["labels"],
        logits=arrays["logits"],
        grad_loss=arrays.get("grad_loss"),
        dim=dim,
        outputs=outputs,
        options=options,
        **{n: arrays.get(n) for n in WEIGHT_INPUTS},
    )
    computed = now()
    metrics.inference_series(op, result.dtype.name, engine.providers[0]).observe(
        (computed - decoded) / 1e9
    )
    timeline = CURRENT.get()
    if timeline is not None:
        timeline.decoded, timeline.computed = decoded, computed
        if timeline.traced:
            timeline.outputs = {n: a.shape for n, a in result.items()}
    return result
