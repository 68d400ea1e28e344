"""The examples in the store's docstrings run, on a local store in a temporary folder (and one on moto's S3).

`fleet.lance` in the current folder holds streams "pump-2" and "pump-7" of a 2-layer LSTM (64 units):
made with their states (versions 1 and 2: the rows, then the id index), then put again (version 3).
`s` is that store opened, `lstm` the torch LSTM, `states` its state for the two pumps. The S3 example
reads `s3://bucket/fleet` on the session's moto server, whose endpoint and keys come from the environment.
"""

import datetime

import pytest
from docstrings import docstrings, run

import statefmt
from statefmt import LayerSignature, StateSignature

pytest.importorskip("lance")
torch = pytest.importorskip("torch")


@pytest.fixture
def namespace(tmp_path, monkeypatch):
    from statefmt import store
    from statefmt.adapters import torch as torch_adapter

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 64, num_layers=2, batch_first=True)
    with torch.no_grad():
        _, first = lstm(torch.randn(2, 6, 5))
        _, later = lstm(torch.randn(2, 4, 5), first)
    ids = ["pump-2", "pump-7"]
    fleet = store.create("fleet.lance", StateSignature([LayerSignature("lstm", 64)] * 2),
                         states=torch_adapter.export(lstm, first).with_stream_ids(ids))
    states = torch_adapter.export(lstm, later).with_stream_ids(ids)
    fleet.put(states)
    return {"statefmt": statefmt, "store": store, "StateSignature": StateSignature, "LayerSignature": LayerSignature,
            "st": torch_adapter, "torch_adapter": torch_adapter, "lstm": lstm, "states": states, "url": "fleet.lance",
            "s": store.open("fleet.lance"), "timedelta": datetime.timedelta}


@pytest.fixture
def s3_fleet(s3_server, monkeypatch):
    """The environment that points Lance at the moto server, and a store at s3://bucket/fleet on it."""
    import boto3

    from statefmt import store

    for name, value in {"AWS_ENDPOINT": s3_server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ALLOW_HTTP": "true"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    if "bucket" not in [bucket["Name"] for bucket in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="bucket")
        store.create("s3://bucket/fleet", StateSignature([LayerSignature("lstm", 64)]),
                     storage_options={"aws_region": "eu-west-1"})


STORE = docstrings("statefmt.store", "statefmt.store._store")


@pytest.mark.parametrize("module, name", STORE)
def test_the_example_runs(namespace, request, module, name):
    if name == "statefmt.store._store.open":
        request.getfixturevalue("s3_fleet")
    run(module, name, namespace)


def test_every_store_docstring_with_an_example_is_run():
    names = {param.values[1] for param in STORE}
    assert {"statefmt.store", "statefmt.store._store.open", "statefmt.store._store.Store.put"} <= names
