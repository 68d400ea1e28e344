import numpy as np, statefmt, time
from statefmt import StateSet, LayerState

def test_s3_odd(s3_bucket):
    server, bucket = s3_bucket
    o = server.fsspec_options
    s = StateSet([LayerState("g","gru",h=np.arange(6,dtype="f4").reshape(1,2,3))], stream_ids=["a","b"])
    for name in ["a?b.statefmt", "a#b.statefmt", "sp ace.statefmt", "dir/", "x%20y.statefmt"]:
        url = f"s3://{bucket}/{name}"
        try:
            statefmt.save(s, url, storage_options=o)
            got = statefmt.load(url, storage_options=o)
            print(name, "ok", got.stream_ids)
        except Exception as e:
            print(name, type(e).__name__, str(e)[:200])
    import s3fs
    fs = s3fs.S3FileSystem(**o); print(fs.ls(bucket))
    # missing bucket, missing object
    for url in [f"s3://{bucket}/nope", "s3://nobucket-zz/x", f"s3://{bucket}"]:
        try: statefmt.load(url, storage_options=o)
        except Exception as e: print(url, type(e).__name__, str(e)[:200])
    t=time.time()
    try: statefmt.save(s, "s3://nobucket-zz/x", storage_options=o)
    except Exception as e: print("save nobucket", type(e).__name__, str(e)[:200], time.time()-t)
