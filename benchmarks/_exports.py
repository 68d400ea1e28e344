"""Host copies made by the JAX (Flax) and Keras exports, in a process of their own (TensorFlow is heavy).

`python -m benchmarks._exports` prints one row per framework: the export of one LSTM layer's
h and c (65,536 streams x 256 units, float32, 128 MiB) beside a memcpy of the same bytes.
"""

from __future__ import annotations

import os
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
STREAMS, UNITS = 65_536, 256


def best(action, repeat: int = 3):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    h = np.random.default_rng(0).random((STREAMS, UNITS), dtype=np.float32)
    c = h + 1
    copy, _ = best(lambda: (h.copy(), c.copy()))
    print(f"  {'memcpy of h and c (128 MiB)':<44} {copy * 1e3:9.1f} ms")

    import flax.linen as nn
    import jax.numpy as jnp

    from statefmt.adapters import flax as flax_adapter

    carry = (jnp.asarray(c), jnp.asarray(h))
    seconds, states = best(lambda: flax_adapter.export(nn.RNN(nn.LSTMCell(UNITS)), carry))
    shared = states[0]["h"].ctypes.data == carry[1].unsafe_buffer_pointer()
    print(f"  {'Flax export, 1 LSTM layer (JAX on CPU)':<44} {seconds * 1e3:9.1f} ms "
          f"{seconds / copy:12.2f}x memcpy  shares the JAX buffer (no host copy): {shared}")

    import keras
    import tensorflow as tf

    from statefmt.adapters import keras as keras_adapter

    lstm = keras.layers.LSTM(UNITS, return_state=True)
    lstm.build((None, 1, UNITS))
    tensors = [tf.constant(h), tf.constant(c)]
    seconds, _ = best(lambda: keras_adapter.export(lstm, tensors))
    print(f"  {'Keras export, 1 LSTM layer (TensorFlow CPU)':<44} {seconds * 1e3:9.1f} ms "
          f"{seconds / copy:12.2f}x memcpy  (1.0x = one host copy: EagerTensor.numpy())")


if __name__ == "__main__":
    main()
