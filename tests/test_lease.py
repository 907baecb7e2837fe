"""The per-date lease on local disk and on S3 (moto on 127.0.0.1, conditional PUTs)."""
import threading
import time

import pyarrow.fs as pafs
import pytest

from nightscore import lease, storage


@pytest.fixture(params=["local", "s3"])
def date_dir(request, tmp_path):
    if request.param == "local":
        return pafs.LocalFileSystem(), str(tmp_path / "out" / "date=2026-11-23")
    bucket = request.getfixturevalue("s3_bucket")
    return storage.filesystem(f"s3://{bucket}")[0], f"{bucket}/out/date=2026-11-23"


def holder_of(fs, path):
    return storage.read_json(fs, storage.join(path, lease.LEASE))


def test_a_second_run_is_refused_naming_the_holder(date_dir):
    fs, path = date_dir
    first = lease.acquire(fs, path, "run-a", seconds=60)
    with pytest.raises(lease.LeaseHeld, match=r"run run-a on host .* started .*Z?.*expires"):
        lease.acquire(fs, path, "run-b", seconds=60)
    first.check()  # still ours, renewed
    first.release()
    assert not storage.exists(fs, storage.join(path, lease.LEASE))
    lease.acquire(fs, path, "run-b", seconds=60).release()


def test_of_runs_started_together_exactly_one_wins(date_dir):
    fs, path = date_dir
    start, won, refused = threading.Barrier(6), [], []

    def run(i: int) -> None:
        start.wait()
        try:
            won.append(lease.acquire(fs, path, f"run-{i}", seconds=60))
        except lease.LeaseHeld:
            refused.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5
    assert holder_of(fs, path)["run_id"] == won[0].holder["run_id"]


def test_an_expired_lease_is_taken_over_and_its_old_holder_cannot_commit(date_dir):
    fs, path = date_dir
    crashed = lease.acquire(fs, path, "run-crashed", seconds=0.5)
    time.sleep(1.1)
    taker = lease.acquire(fs, path, "run-next", seconds=60)
    assert holder_of(fs, path)["run_id"] == "run-next"
    with pytest.raises(lease.LeaseLost, match="run-crashed lost its lease"):
        crashed.check()
    crashed.release()  # a lost lease's release leaves the new holder's alone
    assert holder_of(fs, path)["run_id"] == "run-next"
    taker.release()


def test_wait_takes_the_lease_once_the_holder_releases(date_dir):
    fs, path = date_dir
    first = lease.acquire(fs, path, "run-a", seconds=60)
    threading.Timer(1.0, first.release).start()
    t0 = time.monotonic()
    second = lease.acquire(fs, path, "run-b", seconds=60, wait=30)
    assert 0.9 < time.monotonic() - t0 < 10
    assert holder_of(fs, path)["run_id"] == "run-b"
    second.release()


def test_held_renews_while_the_run_lives(date_dir):
    fs, path = date_dir
    with lease.held(fs, path, "run-a", seconds=1.5) as mine:
        first_expiry = holder_of(fs, path)["expires_at"]
        time.sleep(2.5)  # longer than the lease: only renewal keeps it
        with pytest.raises(lease.LeaseHeld):
            lease.acquire(fs, path, "run-b", seconds=60)
        assert holder_of(fs, path)["expires_at"] > first_expiry
        mine.check()
    assert not storage.exists(fs, storage.join(path, lease.LEASE))
