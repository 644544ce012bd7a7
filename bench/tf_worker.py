"""TensorFlow's own op, timed in its own virtual environment (bench/.venv-tf; TensorFlow's
pins clash with the service's), driven by bench/engine.py over stdin/stdout.

One JSON command per line: {"size": [n, c]} makes float32 inputs of that shape;
{"run": "loss"} or {"run": "loss + grads"} times one call and answers its seconds.
Both are `tf.function`s, TensorFlow's fast path, on 2 intra-op threads like the engine.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(1)


@tf.function
def loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)


@tf.function
def loss_and_grads(labels: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, ...]:
    with tf.GradientTape() as tape:
        tape.watch([labels, logits])
        out = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    grad_labels, grad_logits = tape.gradient(out, [labels, logits])
    return out, grad_logits, grad_labels


def main() -> None:
    rng = np.random.default_rng(0)
    labels = logits = tf.zeros((1, 1))
    calls = {"loss": loss, "loss + grads": loss_and_grads}
    for line in sys.stdin:
        command = json.loads(line)
        if "size" in command:
            n, c = command["size"]
            logits = tf.constant(rng.standard_normal((n, c), dtype=np.float32))
            labels = tf.constant(np.full((n, c), 1 / c, np.float32))
            for fn in calls.values():  # trace once, outside the timings
                fn(labels, logits)
            answer: object = "ready"
        else:
            start = time.perf_counter()
            result = calls[command["run"]](labels, logits)
            np.asarray(result[0] if isinstance(result, tuple) else result)  # wait for it
            answer = time.perf_counter() - start
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
