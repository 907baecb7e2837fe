"""End to end scoring with Ray Data inference actors, on local disk and S3, plus the commit protocol."""
import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import LOCAL_CONFIG, REPO, free_port, scoring_config
from nightscore import partition, storage, synth
from nightscore.config import load_config
from nightscore.drills import ENV as FAULT_DRILL
from nightscore.model import store
from nightscore.lease import LeaseHeld
from nightscore.scoring.pipeline import InvariantError, _check, resolve_input, run
from nightscore.scoring.prepare import valid_rows, write_quarantine
from nightscore.suitability import inputs_from_table, load_catalog, rule_masks
from nightscore.validate import InputFileError, conform, preflight, split

pytestmark = pytest.mark.slow
DATE = dt.date(2026, 11, 24)
N = 1500


def make_cfg(tiny, *extra):
    return scoring_config(tiny, "score.batch_size=128", "score.rows_per_file=1000", *extra)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    root = tmp_path_factory.mktemp("snap")
    table, _ = synth.generate(N, DATE, 21, synth.catalog_product_ids("builtin:catalog.yaml"))
    table = synth.corrupt(table, load_config(LOCAL_CONFIG).schema, 0.03, seed=2)
    part = root / f"date={DATE}"
    part.mkdir()
    pq.write_table(table.slice(0, 700), part / "part-0.parquet")
    pq.write_table(table.slice(700), part / "part-1.parquet")
    return str(root), table


def check_outputs(out_uri, table, cfg, reasons=True):
    fs, root = storage.filesystem(out_uri)
    record = partition.manifest(fs, root, DATE)
    scores = partition.read(out_uri, DATE, "scores")
    quarantine = partition.read(out_uri, DATE, "quarantine")
    assert record["input_rows"] == N == record["scored_rows"] + record["quarantined_rows"]
    assert set(record["phase_seconds"]) == {"verify_and_preflight", "ray_start", "scoring", "checks"}
    assert (scores.num_rows, quarantine.num_rows) == (record["scored_rows"], record["quarantined_rows"])
    assert quarantine.num_rows > 0 and all(quarantine.column("reason").to_pylist())
    # every input customer exactly once across scores and quarantine
    scored = scores.column("customer_id").to_pylist()
    assert len(scored) == len(set(scored))
    in_ids = set(i for i in table.column("customer_id").to_pylist() if i)
    q_ids = set(i for i in quarantine.column("customer_id").to_pylist() if i)
    assert in_ids == set(scored) | q_ids and not set(scored) & q_ids
    # schema, ranges, monotone score
    assert scores.schema.names == ["customer_id", "snapshot_date", "pd_12m", "credit_score", "risk_band",
                                   "reason_codes", "recommendations", "model_version", "run_id",
                                   "recommendation_arm"]
    assert set(scores.column("recommendation_arm").to_pylist()) == {"champion"}  # no A/B test outside nightly
    pd_ = scores.column("pd_12m").to_numpy()
    score = scores.column("credit_score").to_numpy()
    assert ((pd_ > 0) & (pd_ < 1)).all() and ((score >= 300) & (score <= 850)).all()
    order = np.argsort(pd_)
    assert (np.diff(score[order]) <= 0).all()
    assert set(scores.column("run_id").to_pylist()) == {record["run_id"]}
    # reason codes exactly for band C or worse
    bands = np.array(scores.column("risk_band").to_pylist())
    has_reasons = np.array([len(r) > 0 for r in scores.column("reason_codes").to_pylist()])
    assert not has_reasons[np.isin(bands, ["A", "B"])].any()
    assert has_reasons[np.isin(bands, ["C", "D", "E"])].mean() > 0.9 if reasons else not has_reasons.any()
    check_recommendations(scores, table, cfg)
    # no PII anywhere in outputs
    blob = json.dumps(record) + str(scores.to_pylist()) + str(quarantine.to_pylist())
    for col in cfg.schema.pii:
        assert col not in quarantine.column_names
        for v in table.column(col).to_pylist()[:300]:
            assert v not in blob
    return record


def check_recommendations(scores, table, cfg):
    """Every recommendation passes every suitability rule, at most k, never a held product."""
    catalog = load_catalog(cfg.products.catalog)
    rows = table.filter(pc.is_in(table.column("customer_id"), value_set=scores.column("customer_id")))
    rows = rows.take(pc.index_in(scores.column("customer_id"), value_set=rows.column("customer_id")))
    masks = rule_masks(catalog, cfg.products.suitability, credit_score=scores.column("credit_score").to_numpy(),
                       **inputs_from_table(rows, cfg.products.suitability))
    assert set(masks) == {"risk_tolerance", "complex_needs_experience", "credit_min_score",
                          "vulnerable_protection", "age_bounds", "exclude_held"}
    recs = scores.column("recommendations").to_pylist()
    n_recs = 0
    for i, items in enumerate(recs):
        assert len(items) <= cfg.products.top_k
        assert [r["rank"] for r in items] == list(range(1, len(items) + 1))
        for r in items:
            j = catalog.ids.index(r["product_id"])
            assert all(m[i, j] for m in masks.values()), (i, r)
            n_recs += 1
    assert n_recs > 0


def test_score_job_local_end_to_end(tiny_model_dir, snapshot, tiny_backbone, tmp_path):
    root, table = snapshot
    cfg = make_cfg(tiny_backbone)
    out = str(tmp_path / "out")
    cmd = [sys.executable, str(REPO / "jobs" / "score.py"), "--input", root, "--model", tiny_model_dir, "--output", out,
           "--date", str(DATE), f"model.backbone={tiny_backbone}", "score.precision=fp32", "score.batch_size=128"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"committed {out}/date={DATE}" in r.stdout
    check_outputs(out, table, cfg)
    log = r.stdout + r.stderr
    for col in cfg.schema.pii:
        for v in table.column(col).to_pylist()[:300]:
            assert v not in log, f"PII value of {col} in the job log"
    # rerunning a committed date is a no-op
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0 and "already committed" in r2.stdout


def test_forced_rerun_replaces_atomically(ray_local, tiny_model_dir, snapshot, tiny_backbone, tmp_path):
    root, table = snapshot
    cfg = make_cfg(tiny_backbone)
    out = str(tmp_path / "out")
    first = run(cfg, root, tiny_model_dir, out, DATE)
    again = run(cfg, root, tiny_model_dir, out, DATE)
    assert again["skipped"] and again["run_id"] == first["run_id"]
    forced = run(cfg, root, tiny_model_dir, out, DATE, force=True)
    assert forced["run_id"] != first["run_id"]
    runs = sorted(p.name for p in (tmp_path / "out" / f"date={DATE}").iterdir() if p.name.startswith("run="))
    assert runs == [f"run={forced['run_id']}"]  # the superseded run's files are gone
    check_outputs(out, table, cfg)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runs_of_one_date_started_together_commit_once(where, ray_local, tiny_model_dir, snapshot, tiny_backbone,
                                                            tmp_path, request):
    """A cron run and a manual --force of the same date: the date's lease lets exactly one commit."""
    root, table = snapshot
    out = f"s3://{request.getfixturevalue('s3_bucket')}/scores" if where == "s3" else str(tmp_path / "out")
    cfg = make_cfg(tiny_backbone, "scorecard.reason_codes=false")
    start, results = threading.Barrier(2), {}

    def go(force: bool) -> None:
        start.wait()
        try:
            results[force] = run(cfg, root, tiny_model_dir, out, DATE, force=force)
        except LeaseHeld as exc:
            results[force] = exc

    threads = [threading.Thread(target=go, args=(force,)) for force in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    committed = [r for r in results.values() if isinstance(r, dict) and not r.get("skipped")]
    assert len(committed) == 1
    other = next(r for r in results.values() if r is not committed[0])
    if isinstance(other, LeaseHeld):  # (else it started after the commit and found the date done)
        assert committed[0]["run_id"] in str(other) and "is being scored by another run" in str(other)
    fs, path = storage.filesystem(out)
    record = partition.manifest(fs, path, DATE)
    assert record["run_id"] == committed[0]["run_id"]
    date_dir = partition.date_dir(path, DATE)
    for kind in partition.KINDS:  # the manifest names only files that exist
        assert all(storage.exists(fs, storage.join(date_dir, rel)) for rel in record["files"][kind])
    assert not storage.exists(fs, storage.join(date_dir, "_lease.json"))  # released
    check_outputs(out, table, cfg, reasons=False)


def test_pre_commit_check_compares_id_sets_not_counts(tmp_path):
    cfg = load_config(LOCAL_CONFIG)
    fs, _ = storage.filesystem(str(tmp_path))

    def check(inputs, scored, held):
        staging = tmp_path / f"case{len(list(tmp_path.iterdir()))}" / "date=x" / "run=r"
        storage.write_parquet(pa.table({"customer_id": pa.array(scored, pa.string())}), fs,
                              str(staging / "scores" / "p.parquet"))
        storage.write_parquet(pa.table({cfg.schema.id: pa.array(held, pa.string())}), fs,
                              str(staging / "quarantine" / "p.parquet"))
        storage.write_parquet(pa.table({cfg.schema.id: pa.array(inputs, pa.string())}), fs,
                              str(staging.parent / "in.parquet"))
        return _check(fs, str(staging), fs, [str(staging.parent / "in.parquet")], cfg, len(inputs))

    assert check(["a", "b", "c", None], ["a", "b"], ["c", None])["null_id_rows"] == 1
    with pytest.raises(InvariantError, match="in neither scores nor quarantine"):  # same counts, one id swapped
        check(["a", "b", "c"], ["a", "b", "x"], [])
    with pytest.raises(InvariantError, match="both scored and quarantined"):
        check(["a", "b", "c"], ["a", "b"], ["b"])
    with pytest.raises(InvariantError, match="not in the input"):
        check(["a", "b", None], ["a", "b"], ["c"])
    with pytest.raises(InvariantError, match="no customer_id"):  # a null id that was not quarantined as one
        check(["a", "b", None], ["a"], ["b", "b"])


def test_crash_before_commit_leaves_nothing_committed(ray_local, tiny_model_dir, snapshot, tiny_backbone, tmp_path,
                                                      monkeypatch):
    root, _ = snapshot
    monkeypatch.setenv(FAULT_DRILL, "fail_before_commit")
    cfg = make_cfg(tiny_backbone)
    out = str(tmp_path / "out")
    with pytest.raises(InvariantError, match="before commit"):
        run(cfg, root, tiny_model_dir, out, DATE)
    fs, path = storage.filesystem(out)
    assert partition.manifest(fs, path, DATE) is None
    assert list((tmp_path / "out" / f"date={DATE}").glob("run=*/scores/*.parquet"))  # staged, not committed
    with pytest.raises(storage.StorageError, match="no committed manifest"):
        partition.read(out, DATE)


def test_inference_actor_killed_mid_run_still_completes(ray_local, tiny_model_dir, snapshot, tiny_backbone, tmp_path,
                                                        monkeypatch):
    root, table = snapshot
    monkeypatch.setenv(FAULT_DRILL, "kill_actor_after_batches=2")
    cfg = make_cfg(tiny_backbone, "score.batch_size=64",
                   "scorecard.reason_codes=false")
    record = run(cfg, root, tiny_model_dir, str(tmp_path / "out"), DATE)
    assert record["scored_rows"] + record["quarantined_rows"] == N
    check_outputs(str(tmp_path / "out"), table, cfg, reasons=False)


def test_bad_file_fails_before_anything_is_written(ray_local, tiny_model_dir, snapshot, tiny_backbone, tmp_path):
    _, table = snapshot
    part = tmp_path / "bad" / f"date={DATE}"
    part.mkdir(parents=True)
    pq.write_table(table.slice(0, 100), part / "part-0.parquet")
    pq.write_table(table.slice(100, 100).drop_columns(["annual_income"]), part / "part-1.parquet")
    out = tmp_path / "out"
    with pytest.raises(InputFileError, match=r"part-1\.parquet: missing required column\(s\) annual_income"):
        run(make_cfg(tiny_backbone), str(tmp_path / "bad"), tiny_model_dir, str(out), DATE)
    assert not out.exists()


def test_missing_date_fails_instead_of_scoring_other_days(tiny_model_dir, snapshot, tiny_backbone, tmp_path):
    """A snapshot root without the asked date (the day's file has not landed) or a partition
    of another day stops the run before anything is written. Scoring the other days would
    quarantine every row and commit an empty day that a later rerun would skip."""
    root, _ = snapshot
    out = tmp_path / "out"
    later = DATE + dt.timedelta(days=1)
    with pytest.raises(InputFileError, match=rf"has no date={later} partition .* the latest date={DATE}"):
        run(make_cfg(tiny_backbone), root, tiny_model_dir, str(out), later)
    with pytest.raises(InputFileError, match=rf"is the date={DATE} partition, not date={later}"):
        run(make_cfg(tiny_backbone), f"{root}/date={DATE}", tiny_model_dir, str(out), later)
    assert not out.exists()
    # a folder without date= folders is the partition itself; date= folders further down are refused
    fs, path, files = resolve_input(root, DATE, None)
    assert path.endswith(f"date={DATE}") and len(files) == 2
    for folder in ("plain", f"nested/bank_a/date={DATE}"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.parquet").write_bytes(Path(files[0]).read_bytes())
    assert resolve_input(str(tmp_path / "plain"), later, None)[2] == [str(tmp_path / "plain" / "x.parquet")]
    with pytest.raises(InputFileError, match=rf"holds date= folders deeper down \(bank_a/date={DATE}\)"):
        resolve_input(str(tmp_path / "nested"), DATE, None)


@pytest.mark.parametrize("case", ["missing date", "storage unreachable"])
def test_job_reports_input_and_storage_failures_in_one_line(case, tiny_model_dir, snapshot, tiny_backbone, tmp_path):
    """Exit 1 and one readable line, no traceback: the day's snapshot is missing, or the
    output store refuses connections (here a loopback port nothing listens on)."""
    root, _ = snapshot
    date, output, extra = DATE, str(tmp_path / "out"), []
    if case == "missing date":
        date += dt.timedelta(days=1)
    else:
        output, extra = "s3://bucket/out", [f"storage.s3.endpoint_url=http://127.0.0.1:{free_port()}"]
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "score.py"), "--input", root, "--model", tiny_model_dir,
                        "--output", output, "--date", str(date), f"model.backbone={tiny_backbone}", *extra],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    want = f"has no date={date} partition" if case == "missing date" else "OSError: .*bucket 'bucket'"
    assert re.search(want, r.stderr.strip().splitlines()[-1])
    assert not (tmp_path / "out").exists()


def test_tampered_model_fails_before_scoring(ray_local, tiny_model_dir, snapshot, tiny_backbone, tmp_path):
    import shutil

    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "calibration.json").write_text("{}")  # a file the manifest does not know
    with pytest.raises(store.ModelError, match="not listed in the manifest"):
        run(make_cfg(tiny_backbone), snapshot[0], str(bad), str(tmp_path / "out"), DATE)


def test_a_compiled_cache_others_can_write_fails_the_run_naming_it(tiny_model_dir, snapshot, tiny_backbone, tmp_path):
    cache = tmp_path / "compiled"
    cache.mkdir()
    cache.chmod(0o775)  # native code another user could swap in
    cfg = make_cfg(tiny_backbone, f"score.compiled_cache={cache}", "score.compile=true")
    with pytest.raises(store.ModelError, match=f"{cache} can be written by other users"):
        run(cfg, snapshot[0], tiny_model_dir, str(tmp_path / "out"), DATE)
    fs, path = storage.filesystem(str(tmp_path / "out"))
    assert partition.manifest(fs, path, DATE) is None


def test_s3_input_and_output(ray_local, tiny_model_dir, snapshot, tiny_backbone, s3_bucket):
    root, table = snapshot
    fs, path = storage.filesystem(f"s3://{s3_bucket}/snapshots")
    for f in sorted((__import__("pathlib").Path(root) / f"date={DATE}").glob("*.parquet")):
        storage.write_parquet(pq.read_table(f), fs, f"{path}/date={DATE}/{f.name}")
    cfg = make_cfg(tiny_backbone)
    out = f"s3://{s3_bucket}/scores"
    record = run(cfg, f"s3://{s3_bucket}/snapshots", tiny_model_dir, out, DATE)
    assert record["input_uri"] == f"s3://{s3_bucket}/snapshots/date={DATE}"
    check_outputs(out, table, cfg)
    assert run(cfg, f"s3://{s3_bucket}/snapshots", tiny_model_dir, out, DATE)["skipped"]


def test_quarantine_streams_one_file_per_input_file(tiny_model_dir, tmp_path):
    """Input files may differ in their extra columns; each file's bad rows land in their own file.
    The same pass counts what the model's encoders had not seen among the valid rows."""
    cfg = load_config(LOCAL_CONFIG, ["score.prep_batch_size=100"])
    table, _ = synth.generate(400, DATE, 5, synth.catalog_product_ids("builtin:catalog.yaml"))
    table = synth.corrupt(table, cfg.schema, 0.1, seed=4)
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    pq.write_table(table.slice(0, 200), files[0])
    pq.write_table(table.slice(200).append_column("campaign", pa.array(["spring"] * 200)), files[1])
    fs, _ = storage.filesystem(str(tmp_path))
    dups = preflight(fs, files, cfg.schema)
    counts = write_quarantine(fs, files, cfg, store.load_config(Path(tiny_model_dir)), tiny_model_dir, DATE, dups,
                              fs, str(tmp_path / "q"))
    assert set(counts.as_dict()) == {"unseen", "out_of_range", "truncated"}

    written = sorted((tmp_path / "q").iterdir())
    assert [p.name for p in written] == ["part-00000.parquet", "part-00001.parquet"]
    for path, source in zip(written, files):
        got = pq.read_table(path)
        expected = split(conform(pq.read_table(source), cfg.schema, source), cfg.schema, DATE, dups).quarantine
        assert got.num_rows == expected.num_rows > 0
        assert got.column("customer_id").to_pylist() == expected.column("customer_id").to_pylist()
        assert not set(cfg.schema.pii) & set(got.column_names)
    assert "campaign" in pq.read_schema(written[1]).names


def test_prepared_rows_carry_the_model_input_and_what_suitability_reads(tiny_model_dir, tiny_backbone):
    """Preparation validates with the run's config and encodes with the model directory's own
    encoders: the actors get exactly what evaluation and training compute for the same rows."""
    from nightscore.scoring.prepare import model_input

    table, _ = synth.generate(200, DATE, 6, synth.catalog_product_ids("builtin:catalog.yaml"))
    table = table.append_column("path", pa.array(["part-0.parquet"] * table.num_rows))
    cfg = make_cfg(tiny_backbone)
    model_cfg = store.load_config(Path(tiny_model_dir))
    prepared = valid_rows(table, cfg, model_cfg, tiny_model_dir, DATE, pa.array([], pa.string()))
    direct, _ = model_input(table, model_cfg, tiny_model_dir)
    assert prepared.num_rows == 200
    for name in direct.column_names:  # as Python values: NaN (a null number) equals itself there
        assert str(prepared.column(name).to_pylist()) == str(direct.column(name).to_pylist()), name
    assert {"customer_id", "risk_tolerance", "products_held"} <= set(prepared.column_names)
    assert not set(cfg.schema.pii) & set(prepared.column_names)
