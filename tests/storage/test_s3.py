"""Issue 6: stores at a URL, for clusters whose workers share no disk, against a real S3 server
(moto's, on 127.0.0.1) that the test starts; workers reach it through the same environment."""

import json

import pytest
from moto.server import ThreadedMotoServer


@pytest.fixture
def s3(monkeypatch):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "gradjob",
                       "AWS_SECRET_ACCESS_KEY": "gradjob", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)  # inherited by the embedded cluster's worker processes
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("nightly-bucket")
    yield fs
    server.stop()


def test_job_with_its_store_root_in_s3(gradjob, tmp_path, s3):
    (tmp_path / "job.toml").write_text('''
[job]
name = "s3"
store_root = "s3://nightly-bucket/gradjob"
[cluster]
workers = 2
[[check]]
name = "seed"
model = "network"
case = "seed"
''')
    first = gradjob("submit", "job.toml", "--json")
    assert first.exit_code == 0, first.stderr
    check = json.loads(first.stdout)["checks"][0]
    assert check["store"].startswith("s3://nightly-bucket/gradjob/seed/network-seed-")
    assert check["difference"] < 1e-9 and check["evaluated_chunks"] == check["n_chunks"]
    assert s3.exists(check["store"].removeprefix("s3://") + "/gradapprox/zarr.json")

    again = json.loads(gradjob("submit", "job.toml", "--json").stdout)["checks"][0]
    assert again["evaluated_chunks"] == 0 and again["difference"] == check["difference"]  # resumed from S3

    report = gradjob("report", check["store"], "--json")
    assert report.exit_code == 0 and json.loads(report.stdout)["difference"] == check["difference"]
    history = gradjob("history", "s3://nightly-bucket/gradjob")
    assert history.exit_code == 0 and len(history.stdout.splitlines()) == 3
