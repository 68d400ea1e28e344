"""Serving a PyTorch LSTM forecaster with ONNX Runtime, each stream's state kept in a statefmt store between calls.

ONNX Runtime is stateless by design (onnxruntime#11085): the caller feeds each stream's state in
and keeps what comes out. Here a 2-layer LSTM forecaster, trained briefly in PyTorch on noisy
sine waves, is exported with torch.onnx and served by one ORT session. Requests arrive in
rounds; each carries the next chunk of a few of many streams, in any mix. For each request
the server gets those streams' states from the store (statefmt.store, on Lance) by id (new
streams start from zeros), runs the session once for the whole batch, and puts the final
states back by id.

Halfway, the server is dropped and a new one starts from the same model and store: every
stream must continue exactly as one uninterrupted PyTorch run of its whole history predicts.
A server restarted on an empty store (every stream from zeros) must not.

    python examples/serve_onnx.py [folder]
"""

from __future__ import annotations

import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np

STREAMS, UNITS, LAYERS, CHUNK, ROUNDS, PER_REQUEST = 40, 16, 2, 15, 12, 8


def series(streams: int, length: int, seed: int = 0) -> np.ndarray:
    """Noisy sine waves of different periods and phases: [streams, length, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :]
    period = rng.uniform(12, 40, (streams, 1))
    phase = rng.uniform(0, 2 * np.pi, (streams, 1))
    noise = 0.05 * rng.standard_normal((streams, length))
    return (np.sin(2 * np.pi * t / period + phase) + noise)[..., None].astype("float32")


def forecaster():
    """A 2-layer LSTM and a linear head, trained for a few seconds to predict the next value."""
    import torch

    class Forecaster(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(1, UNITS, num_layers=LAYERS, batch_first=True)
            self.head = torch.nn.Linear(UNITS, 1)

        def forward(self, x, h0, c0):
            y, (hn, cn) = self.lstm(x, (h0, c0))
            return self.head(y), hn, cn

    torch.manual_seed(0)
    model = Forecaster()
    data = torch.from_numpy(series(32, 121, seed=1))
    zeros = torch.zeros(LAYERS, 32, UNITS)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        optimizer.zero_grad()
        prediction, _, _ = model(data[:, :-1], zeros, zeros)
        loss = torch.nn.functional.mse_loss(prediction, data[:, 1:])
        loss.backward()
        optimizer.step()
    return model.eval(), loss.item()


def export_onnx(model, path: Path) -> None:
    """torch.onnx.export with the state as inputs and outputs, batch and time dynamic."""
    import torch

    zeros = torch.zeros(LAYERS, 2, UNITS)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(2, CHUNK, 1), zeros, zeros.clone()), buffer, dynamo=False,
                          input_names=["x", "h0", "c0"], output_names=["y", "hn", "cn"],
                          dynamic_axes={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"},
                                        "h0": {1: "batch"}, "c0": {1: "batch"}, "hn": {1: "batch"},
                                        "cn": {1: "batch"}})
    path.write_bytes(buffer.getvalue())


class Server:
    """One ORT session, called once per request; the streams' states live in the store between calls."""

    def __init__(self, model_path: Path, store_path: Path):
        import onnxruntime

        from statefmt import store
        from statefmt.adapters import onnx as onnx_adapter

        self.adapter = onnx_adapter
        self.session = onnxruntime.InferenceSession(str(model_path))
        if store_path.exists():
            self.store = store.open(str(store_path))
        else:
            self.store = store.create(str(store_path), onnx_adapter.signature(self.session))

    def predict(self, ids: list[str], chunk: np.ndarray) -> np.ndarray:
        feeds = self.adapter.initial_state(self.store.get(ids, missing="zeros"), self.session)
        outputs = self.session.run(None, {"x": chunk, **feeds})
        self.store.put(self.adapter.export(self.session, outputs).with_stream_ids(ids))
        return outputs[0]


def requests(seed: int = 0):
    """Rounds of requests: each a few streams (chosen at random) sending their next CHUNK steps."""
    rng = np.random.default_rng(seed)
    sent = {f"stream-{i:03d}": 0 for i in range(STREAMS)}
    for _ in range(ROUNDS):
        for group in np.array_split(rng.permutation(STREAMS)[:STREAMS // 2], STREAMS // 2 // PER_REQUEST):
            ids = [f"stream-{i:03d}" for i in sorted(group)]
            yield [(stream, sent[stream]) for stream in ids]
            for stream in ids:
                sent[stream] += 1


def main(folder: Path) -> dict[str, float]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread (several spin on a busy machine)
    try:
        return _serve(folder)
    finally:
        torch.set_num_threads(threads)


def _serve(folder: Path) -> dict[str, float]:
    import torch

    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    model, loss = forecaster()
    model_path = folder / "forecaster.onnx"
    export_onnx(model, model_path)
    data = series(STREAMS, ROUNDS * CHUNK, seed=2)
    plan = list(requests())
    restart = len(plan) // 2

    def chunk(request):
        return np.stack([data[int(stream[7:]), n * CHUNK:(n + 1) * CHUNK] for stream, n in request])

    server = Server(model_path, folder / "streams.lance")
    for request in plan[:restart]:
        server.predict([stream for stream, _ in request], chunk(request))
    del server  # the server goes away; its streams' states are in the store

    restarted = Server(model_path, folder / "streams.lance")
    from_zero = Server(model_path, folder / "empty.lance")
    handed, zero, streams = 0.0, 0.0, set()
    for request in plan[restart:]:
        ids = [stream for stream, _ in request]
        served = restarted.predict(ids, chunk(request))
        naive = from_zero.predict(ids, chunk(request))
        for row, (stream, n) in enumerate(request):  # one uninterrupted PyTorch run of the stream's whole history
            history = torch.from_numpy(data[int(stream[7:]):int(stream[7:]) + 1, :(n + 1) * CHUNK])
            zeros = torch.zeros(LAYERS, 1, UNITS)
            with torch.no_grad():
                expected = model(history, zeros, zeros)[0][0, n * CHUNK:].numpy()
            if n > 0:  # a stream's first chunk starts from zeros everywhere: it shows nothing
                handed = max(handed, float(np.max(np.abs(served[row] - expected))))
                zero = max(zero, float(np.max(np.abs(naive[row] - expected))))
                streams.add(stream)
    result = {"training_mse": loss, "requests": len(plan), "streams_continued": len(streams),
              "restarted_error": handed, "zero_state_error": zero, "seconds": time.perf_counter() - started}
    print(f"PyTorch LSTM forecaster (mse {loss:.4f}) served by ONNX Runtime: {len(plan)} requests over "
          f"{STREAMS} streams, server restarted after {restart}")
    print(f"  after the restart, {len(streams)} streams continued; largest difference from an uninterrupted "
          f"PyTorch run: {handed:.2e}")
    print(f"  the same requests on a server restarted with zero states: {zero:.2e}")
    print(f"  every stream continues exactly: {'yes' if handed < 1e-5 < zero else 'NO'} "
          f"({result['seconds']:.1f} s)")
    return result


if __name__ == "__main__":
    outcome = main(Path(sys.argv[1] if len(sys.argv) > 1 else "out"))
    sys.exit(0 if outcome["restarted_error"] < 1e-5 < outcome["zero_state_error"] else 1)
