"""The fleet store on S3: moto's real server on loopback (the session fixture), Lance's own object store client."""

from __future__ import annotations

import pytest

from statefmt import StateFormatError, StateMismatchError, StoreNotFoundError

pytest.importorskip("lance")
pytest.importorskip("moto")
from fleet_rows import SIGNATURE, assert_stream, states_for
from test_store_fleet import GRU, VALUES, flip_a_byte, gru_rows

from statefmt import store


def test_the_same_code_on_s3(s3_bucket):
    server, bucket = s3_bucket
    url, options = f"s3://{bucket}/fleets/pumps", server.lance_options
    fleet = store.create(url, SIGNATURE, storage_options=options)
    first = states_for([f"pump-{i}" for i in range(30)], seed=1)
    v1 = fleet.put(first)
    second = states_for(["pump-3", "pump-30"], seed=2)
    v2 = fleet.put(second)
    reopened = store.open(url, storage_options=options)
    assert reopened.version == v2 and len(reopened) == 31 and "pump-30" in reopened
    got = reopened.get(["pump-30", "pump-3", "pump-4"])
    assert got.stream_ids == ("pump-30", "pump-3", "pump-4")
    assert_stream(got, second, "pump-3")
    assert_stream(got, first, "pump-4")
    assert_stream(store.open(url, version=v1, storage_options=options).get(["pump-3"]), first, "pump-3")
    assert [v.streams for v in reopened.versions() if v.version in (v1, v2)] == [30, 31]
    with pytest.raises(StateMismatchError, match="'pump-99'"):
        reopened.get(["pump-99"])
    reopened.delete(["pump-0"])
    reopened.compact()
    assert reopened.snapshot().stream_ids == tuple(sorted(f"pump-{i}" for i in range(1, 31)))


def test_what_is_not_a_store_on_s3_names_the_url(s3_bucket):
    server, bucket = s3_bucket
    url = f"s3://{bucket}/nothing-here"
    with pytest.raises(StoreNotFoundError, match=f"^{url}: no store here"):
        store.open(url, storage_options=server.lance_options)
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.put_object(Bucket=bucket, Key="junk/_versions/1.manifest", Body=b"not a manifest")
    with pytest.raises(StateFormatError, match=f"^s3://{bucket}/junk: not a readable statefmt store"):
        store.open(f"s3://{bucket}/junk", storage_options=server.lance_options)


def test_a_flipped_byte_on_s3_never_reaches_the_caller(s3_bucket):
    import boto3

    server, bucket = s3_bucket
    url, options = f"s3://{bucket}/fleet", server.lance_options
    store.create(url, GRU, storage_options=options).put(gru_rows(["a", "b"], VALUES))
    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    listed = client.list_objects_v2(Bucket=bucket, Prefix="fleet/data/")["Contents"]
    newest = max(listed, key=lambda item: item["LastModified"])["Key"]
    data = client.get_object(Bucket=bucket, Key=newest)["Body"].read()
    client.put_object(Bucket=bucket, Key=newest, Body=flip_a_byte(data, 7.5))
    with pytest.raises(StateFormatError, match="streams 'b' do not match their row checksum"):
        store.open(url, storage_options=options).get(["b"])
