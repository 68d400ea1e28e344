"""Truncated-BPTT training of a small LSTM regressor, the same in PyTorch and Keras, for
tests/test_resume_training.py (issue 4, "resuming training").

One sequence is cut into windows; chunk 1 is its first half, chunk 2 the second. The test trains
in its own process; for chunk 2 of the interrupted run it starts this file as a fresh process:

    python tests/examples/resume/bptt.py {torch,keras} FOLDER

which rebuilds the model from FOLDER (weights and recurrent state saved after chunk 1), trains
over chunk 2 and writes FOLDER/resumed.npz: the losses, final weights and final state — and the
losses and weights of the same resume from a zero state, to show that the saved state matters.
Plain SGD without momentum keeps no optimizer state, so weights and recurrent state are all a
resume needs. Weights go through safe formats (safetensors, .weights.h5), never pickle.
"""

import os
import sys
from pathlib import Path

import numpy as np

import statefmt

BATCH, INPUT, UNITS, WINDOW, WINDOWS_PER_CHUNK, LR = 4, 3, 8, 5, 3, 0.1


def chunks():
    """Two chunks of (x, y) windows cut from one sequence; y, a running sum of x, needs the carried state."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 2 * WINDOWS_PER_CHUNK * WINDOW, INPUT)).astype("float32")
    y = (0.3 * np.cumsum(x[..., :1], axis=1)).astype("float32")
    windows = [(np.ascontiguousarray(x[:, t:t + WINDOW]), np.ascontiguousarray(y[:, t:t + WINDOW]))
               for t in range(0, x.shape[1], WINDOW)]
    return windows[:WINDOWS_PER_CHUNK], windows[WINDOWS_PER_CHUNK:]


class TorchRun:
    """nn.LSTM and a Linear head; the state is carried across windows in memory, detached."""

    def __init__(self):
        import torch
        torch.manual_seed(0)
        self.model = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(INPUT, UNITS, batch_first=True),
                                          "head": torch.nn.Linear(UNITS, 1)})
        self.state = None  # None: PyTorch starts from zeros

    def train(self, windows) -> list[float]:
        import torch
        optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)  # no momentum: no optimizer state
        losses = []
        for x, y in windows:
            out, state = self.model["lstm"](torch.from_numpy(x), self.state)
            loss = torch.nn.functional.mse_loss(self.model["head"](out), torch.from_numpy(y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            self.state = tuple(s.detach() for s in state)  # truncated BPTT: no gradient into the last window
            losses.append(loss.item())
        return losses

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        from statefmt.adapters import torch as st
        statefmt.save(st.export(self.model["lstm"], self.state), folder / "state.statefmt")
        save_file(self.model.state_dict(), folder / "model.safetensors")

    @classmethod
    def resume(cls, folder: Path, *, from_state: bool = True) -> "TorchRun":
        from safetensors.torch import load_file

        from statefmt.adapters import torch as st
        run = cls()
        run.model.load_state_dict(load_file(folder / "model.safetensors"))
        if from_state:
            run.state = st.initial_state(statefmt.load(folder / "state.statefmt"), run.model["lstm"])
        return run

    def weights(self) -> dict[str, np.ndarray]:
        return {name: tensor.detach().numpy().copy() for name, tensor in self.model.state_dict().items()}

    def states(self) -> statefmt.StateSet:
        from statefmt.adapters import torch as st
        return st.export(self.model["lstm"], self.state)


class KerasRun:
    """A stateful LSTM (static batch) and a Dense head; the layer carries its state across windows."""

    def __init__(self):
        import keras
        keras.utils.set_random_seed(0)
        inputs = keras.Input(batch_shape=(BATCH, WINDOW, INPUT))
        hidden = keras.layers.LSTM(UNITS, stateful=True, return_sequences=True, name="lstm")(inputs)
        self.model = keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden))
        self.model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", jit_compile=False)

    def train(self, windows) -> list[float]:
        return [float(self.model.train_on_batch(x, y)) for x, y in windows]

    def save(self, folder: Path) -> None:
        from statefmt.adapters import keras as ka
        statefmt.save(ka.export(self.model), folder / "state.statefmt")  # save_weights drops layer.states
        self.model.save_weights(folder / "model.weights.h5")

    @classmethod
    def resume(cls, folder: Path, *, from_state: bool = True) -> "KerasRun":
        from statefmt.adapters import keras as ka
        run = cls()
        run.model.load_weights(folder / "model.weights.h5")
        if from_state:
            ka.load_into(statefmt.load(folder / "state.statefmt"), run.model)
        return run

    def weights(self) -> dict[str, np.ndarray]:
        import keras
        return {variable.path: keras.ops.convert_to_numpy(variable) for variable in self.model.weights}

    def states(self) -> statefmt.StateSet:
        from statefmt.adapters import keras as ka
        return ka.export(self.model)


RUNS = {"torch": TorchRun, "keras": KerasRun}


def resume_chunk2(framework: str, folder: Path) -> None:
    """The fresh process: chunk 2 from the saved state, and from a zero state; results to FOLDER/resumed.npz."""
    _, chunk2 = chunks()
    results = {}
    for prefix, from_state in (("", True), ("cold_", False)):
        run = RUNS[framework].resume(folder, from_state=from_state)
        results[prefix + "loss"] = np.array(run.train(chunk2), dtype="float64")
        results.update({f"{prefix}weights/{name}": array for name, array in run.weights().items()})
        if from_state:
            results.update({f"state/{layer.name}/{s}": layer[s] for layer in run.states() for s in layer.state_names})
    np.savez(folder / "resumed.npz", **results)


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    resume_chunk2(sys.argv[1], Path(sys.argv[2]))
