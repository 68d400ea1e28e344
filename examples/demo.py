"""The main job: a Keras model's recurrent state handed to its PyTorch port, mid-sequence.

A small stateful Keras LSTM forecaster is trained briefly on a synthetic series (4 streams of
noisy sine waves). It predicts chunk 1, which leaves its state in the LSTM; that state is saved
to a statefmt file, checked with `statefmt validate` and shown with `statefmt inspect`. A
PyTorch port (nn.LSTM + nn.Linear) gets the recurrent weights through the weight port and
the state through the file, and predicts chunk 2. It must match Keras' own chunk 2; a port
that starts from a zero state does not.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import statefmt

STREAMS, UNITS, CHUNK = 4, 16, 100
OUT = Path(os.environ.get("STATEFMT_DEMO_DIR", "out"))


def series(length: int) -> np.ndarray:
    """Noisy sine waves, one per stream, with different periods and phases: [streams, length, 1]."""
    rng = np.random.default_rng(0)
    t = np.arange(length)[None, :]
    period = np.array([17.0, 23.0, 31.0, 41.0])[:, None]
    phase = rng.uniform(0, 2 * np.pi, (STREAMS, 1))
    noisy = np.sin(2 * np.pi * t / period + phase) + 0.05 * rng.standard_normal((STREAMS, length))
    return noisy[..., None].astype("float32")


def train_keras(data: np.ndarray):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(batch_shape=(STREAMS, None, 1)),
        keras.layers.LSTM(UNITS, stateful=True, return_sequences=True, name="lstm"),
        keras.layers.Dense(1, name="head"),
    ], name="forecaster")
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    windows = data[:, : 4 * CHUNK]
    for _ in range(30):  # one step per epoch over the whole training stretch, state reset each time
        model.layers[0].reset_state()
        loss = model.train_on_batch(windows[:, :-1], windows[:, 1:])
    model.layers[0].reset_state()
    return model, float(loss)


class TorchPort:
    """The same forecaster in PyTorch: nn.LSTM + nn.Linear, batch-first."""

    def __init__(self):
        import torch

        self.lstm = torch.nn.LSTM(1, UNITS, batch_first=True)
        self.head = torch.nn.Linear(UNITS, 1)

    def predict(self, x: np.ndarray, state) -> np.ndarray:
        import torch

        with torch.no_grad():
            y, _ = self.lstm(torch.from_numpy(x), state)
            return self.head(y).numpy()


def main() -> None:
    from statefmt.adapters import keras as keras_adapter
    from statefmt.adapters import torch as torch_adapter

    started = time.perf_counter()
    OUT.mkdir(exist_ok=True)
    data = series(6 * CHUNK)
    model, loss = train_keras(data)
    print(f"1. Keras: stateful LSTM({UNITS}) forecaster trained on {STREAMS} synthetic streams, final mse {loss:.4f}")

    chunk1, chunk2 = data[:, 4 * CHUNK: 5 * CHUNK], data[:, 5 * CHUNK:]
    model.predict_on_batch(chunk1)  # leaves the state after chunk 1 in the LSTM
    state_file, weights_file = OUT / "keras_state.statefmt", OUT / "keras_weights.statefmt"
    statefmt.save(keras_adapter.export(model), state_file)  # records source: keras, its version, "forecaster"
    statefmt.save(keras_adapter.export_weights(model), weights_file)
    keras_chunk2 = np.asarray(model.predict_on_batch(chunk2))  # Keras' own continuation
    print(f"2. chunk 1 predicted; its state saved to {state_file}")

    for command in (["validate", str(state_file)], ["inspect", str(state_file)]):
        print(f"\n$ statefmt {' '.join(command)}")
        subprocess.run([sys.executable, "-m", "statefmt", *command], check=True)

    port = TorchPort()
    torch_adapter.import_weights(statefmt.load_weights(weights_file), port.lstm)
    dense_kernel, dense_bias = model.get_layer("head").get_weights()
    port.head.weight.data[:] = torch_tensor(dense_kernel.T)
    port.head.bias.data[:] = torch_tensor(dense_bias)
    state = torch_adapter.initial_state(statefmt.load(state_file), port.lstm)
    torch_chunk2 = port.predict(chunk2, state)
    zero_chunk2 = port.predict(chunk2, None)

    handed = float(np.max(np.abs(torch_chunk2 - keras_chunk2)))
    zero = float(np.max(np.abs(zero_chunk2 - keras_chunk2)))
    print("\n3. PyTorch port predicts chunk 2 from the handed-over state")
    print(f"   largest difference from Keras' own chunk 2, state handed over: {handed:.2e}")
    print(f"   largest difference from Keras' own chunk 2, zero state:        {zero:.2e}")
    print(f"   the handed-over state continues the sequence: {'yes' if handed < 1e-5 < zero else 'NO'}"
          f"   ({time.perf_counter() - started:.1f} s)")
    if not handed < 1e-5 < zero:
        sys.exit(1)


def torch_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))


if __name__ == "__main__":
    main()
