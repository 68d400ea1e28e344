import numpy as np

import statefmt


def test_round_trip(tmp_path):
    h = np.arange(6, dtype="float32").reshape(1, 2, 3)
    states = statefmt.StateSet([statefmt.LayerState("g", "gru", h=h)])
    statefmt.save(states, tmp_path / "s.statefmt")
    assert np.array_equal(statefmt.load(tmp_path / "s.statefmt")["g"]["h"], h)
