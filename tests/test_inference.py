"""The in-process predictor: precision choice, kernels, the public fallback of every private
PyTorch API, and attributions that change nothing but cost."""
import ast
import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nightscore import synth
from nightscore.encode import Encoders, Numeric, Vocab
from nightscore.model import store
from nightscore.model.features import to_tensors
from nightscore.scoring import aot, torch_private
from nightscore.scoring.execution import choose_dtype, configure_process, cpu_has_bf16
from nightscore.scoring.inference import Predictor
from nightscore.scoring.kernels import PackedLinear
from nightscore.scoring.prepare import model_input
from nightscore.scoring.torch_private import Unavailable, onednn_ready


class Untimeable(torch.nn.Module):
    def forward(self, *args, **kwargs):
        raise AssertionError("the model ran, but the choice needed no timing")


def test_explicit_precision_and_cpus_without_bf16_need_no_timing():
    cpu = torch.device("cpu")
    assert choose_dtype("fp32", cpu, Untimeable(), {}) == (None, "fp32 (asked)")
    assert choose_dtype("bf16", cpu, Untimeable(), {}) == (torch.bfloat16, "bf16 (asked)")
    if cpu_has_bf16():
        pytest.skip("this CPU has bf16 instructions: 'auto' times both")
    assert choose_dtype("auto", cpu, Untimeable(), {}) == (None, "fp32 (auto: this CPU has no bf16 instructions)")


def explainable_rows(loaded, rows: int, seed: int):
    """Encoded synthetic rows, as the scoring actors get them."""
    table, _ = synth.generate(rows, dt.date(2026, 11, 23), seed, loaded.meta["product_ids"])
    return model_input(table, loaded.config, str(loaded.root))[0]


def test_attributions_leave_predictions_unchanged(tiny_model_dir):
    loaded = store.load(tiny_model_dir)
    ids = explainable_rows(loaded, 150, 9)
    predictor = Predictor(loaded, precision="fp32", micro_batch=32)
    plain = predictor.predict(ids)
    explained = predictor.predict(ids, explain=lambda pd: pd > np.median(pd))
    assert plain.explained is None and plain.contrib is None
    np.testing.assert_allclose(plain.pd, explained.pd, rtol=1e-5)
    np.testing.assert_allclose(plain.propensity, explained.propensity, rtol=1e-5)
    assert explained.explained.sum() == (explained.pd > np.median(explained.pd)).sum()
    assert (np.abs(explained.contrib[~explained.explained]).sum() == 0) and np.abs(explained.contrib).sum() > 0


def test_gradient_pass_runs_eager_attention_on_cpu_with_sdpa_results(tiny_model_dir):
    """On a CPU the reason-code pass runs plain attention (PyTorch's CPU flash backward is
    ~12x its forward): the attributions are the ones SDPA gives, and the model's own
    attention setting is back for the next batch."""
    loaded = store.load(tiny_model_dir)
    ids = explainable_rows(loaded, 60, 3)
    config = loaded.model.backbone.config
    assert config._attn_implementation == "sdpa"
    seen = []
    loaded.model.backbone.register_forward_pre_hook(lambda *_: seen.append(config._attn_implementation))
    explain = dict(explain=lambda pd: pd > 0)
    predictor = Predictor(loaded, precision="fp32", micro_batch=16)
    got = predictor.predict(ids, **explain)
    assert set(seen) == {"sdpa", "eager"} and config._attn_implementation == "sdpa"
    seen.clear()
    predictor.grad_attention = None  # the model's own attention throughout
    want = predictor.predict(ids, **explain)
    assert set(seen) == {"sdpa"}
    assert got.explained.all()
    np.testing.assert_allclose(got.contrib, want.contrib, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.pd, want.pd, rtol=1e-6)


TINY_ENCODERS = Encoders(
    fields=["x", "kind", "note"], labels={"x": [5, 6], "kind": [7], "note": [8]},
    numeric=[Numeric("x", 0.0, 1.0, -3.0, 3.0, [-3.0, -1.0, 0.0, 1.0, 3.0])], categorical=[Vocab("kind", ["a", "b"])],
    lists=[], text=[], start_ids=[1], sep_ids=[2], pad_id=0)


def _model(layers: int, n_products: int = 3, wide: bool = True):
    from transformers import BertConfig, BertModel

    from nightscore.model.network import CreditModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    model = CreditModel(BertModel(cfg), "mean", n_products, True, TINY_ENCODERS, wide).eval()
    if wide:
        with torch.no_grad():
            for p in model.wide.parameters():
                p.normal_(std=0.5)
    return model


def _rows(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, generator=g)
    x[0, 0] = float("nan")
    return {"numeric": x, "categorical": torch.randint(0, 4, (n, 1), generator=g),
            "text_ids": torch.randint(3, 100, (n, 9), generator=g), "text_mask": torch.ones(n, 9, dtype=torch.long)}


@pytest.mark.parametrize("layers,devices,want", [(4, 2, [0, 0, 1, 1]), (6, 4, [0, 0, 1, 2, 2, 3]),
                                                 (3, 1, [0, 0, 0])])
def test_device_map_runs_blocks_contiguously(layers, devices, want):
    """An actor holding several GPUs splits the blocks in even, ordered runs: embeddings first,
    pooler and heads last, every parameter placed."""
    model = _model(layers)
    plan = model.device_map(devices)
    assert [plan[f"backbone.encoder.layer.{i}"] for i in range(layers)] == want
    assert plan["backbone.embeddings"] == 0
    assert plan["backbone.pooler"] == plan["default_head"] == plan["product_head"] == devices - 1
    for name, _ in model.named_parameters():
        assert any(name == key or name.startswith(key + ".") for key in plan), name


def test_spread_model_predicts_the_same():
    """The placement goes through accelerate's dispatch (complete-map check included); on this
    CPU-only machine both 'devices' are the CPU, so only a GPU run shows the transfers."""
    from nightscore.scoring.execution import spread

    model = _model(4)
    x = _rows(5)
    with torch.no_grad():
        want = model(x)["default_logit"]
        spread_model = spread(model, [torch.device("cpu"), torch.device("cpu")])
        got = spread_model(x)["default_logit"]
    torch.testing.assert_close(got, want)
    assert hasattr(spread_model, "hf_device_map")  # what keeps a spread model out of torch.compile


needs_onednn = pytest.mark.skipif(not onednn_ready(), reason="this torch build has no oneDNN linear kernels")


@needs_onednn
def test_packed_linear_matches_linear_forward_and_input_gradient():
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40).requires_grad_(False)
    x = torch.randn(3, 7, 24, requires_grad=True)
    want = linear(x)
    (want * torch.arange(40.0)).sum().backward()
    want_grad, x.grad = x.grad.clone(), None
    got = PackedLinear(linear, rows_hint=21)(x)
    (got * torch.arange(40.0)).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, want_grad, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_prepacked_predictor_gives_the_same_scores_and_reasons(tiny_model_dir):
    """The packed layers replace every nn.Linear on the first fp32 CPU call; PDs, propensities
    and attributions stay those of the plain model."""
    ids = explainable_rows(store.load(tiny_model_dir), 90, 4)
    explain = dict(explain=lambda pd: pd > np.median(pd))
    results = {}
    for onednn in (False, True):
        predictor = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16, onednn=onednn)
        results[onednn] = predictor.predict(ids, **explain)
        kinds = {type(m) for m in predictor.model.modules()}
        assert (PackedLinear in kinds) == onednn and (torch.nn.Linear in kinds) != onednn
    plain, packed = results[False], results[True]
    np.testing.assert_allclose(packed.pd, plain.pd, rtol=1e-5)
    np.testing.assert_allclose(packed.propensity, plain.propensity, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(packed.explained, plain.explained)
    np.testing.assert_allclose(packed.contrib, plain.contrib, rtol=1e-3, atol=1e-6)


def test_heads_stay_fp32_under_bf16_autocast():
    """bf16 autocast speeds the backbone, but a bf16 head would round each logit to 1/64 near
    -2.5, clumping calibrated PDs (an unchanged population then reads as drifted)."""
    model = _model(2)
    x = _rows(64)
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x)
    assert bf16["default_logit"].dtype == bf16["product_logits"].dtype == torch.float32
    # every row keeps a distinct logit, close to fp32 (bf16 rounding alone would merge many)
    assert len(torch.unique(bf16["default_logit"])) == len(torch.unique(fp32["default_logit"]))
    torch.testing.assert_close(bf16["default_logit"], fp32["default_logit"], rtol=0.05, atol=0.02)


@pytest.mark.slow
def test_compiled_predictor_gives_the_same_scores_and_reasons(tiny_model_dir, tmp_path):
    """score.compile on a CPU runs the model's AOTInductor package; PDs, propensities and
    reason-code attributions (taken eagerly, for the explained rows) stay those of the eager
    model. A second predictor loads the package its predecessor built. A "cached" one (a run too
    small to pay back a build) runs eager until a package is there, then loads it."""
    loaded = store.load(tiny_model_dir)
    ids = explainable_rows(loaded, 70, 5)
    explain = dict(explain=lambda pd: pd > np.median(pd))
    eager = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16).predict(ids, **explain)
    cache = str(tmp_path / "compiled")
    small = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16, compile="cached",
                      compiled_cache=cache)
    np.testing.assert_allclose(small.predict(ids).pd, eager.pd, rtol=1e-6)
    assert small.encode == small.model.encode and not Path(cache).exists()  # eager, nothing built
    for run, compile in (("built", True), ("loaded", True), ("loaded when cached", "cached")):
        predictor = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16, compile=compile,
                              compiled_cache=cache)
        got = predictor.predict(ids, **explain)
        assert hasattr(predictor.encode, "constants"), run  # the package ran, not the module
        np.testing.assert_allclose(got.pd, eager.pd, rtol=1e-4)
        np.testing.assert_allclose(got.propensity, eager.propensity, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(got.explained, eager.explained)
        np.testing.assert_allclose(got.contrib, eager.contrib, rtol=1e-3, atol=1e-6)
    assert len(list(Path(cache).iterdir())) == 1  # built once, then loaded
    # the runtime's own copy of the weights is 16-byte aligned; the one it runs on is 64
    assert all((torch.ops.mkldnn.data_ptr(t) if t.is_mkldnn else t.data_ptr()) % 64 == 0
               for t in predictor.encode.constants.values())
    assert aot.package_dir(loaded, None, cache).exists()


@pytest.mark.slow
def test_compiled_package_bf16_matches_autocast_and_a_damaged_one_is_rebuilt(tiny_model_dir, tmp_path):
    """The bf16 package computes what bf16 autocast does; a package whose file no longer matches
    its recorded sha256 is not loaded but removed, and rebuilt where the run builds one."""
    loaded = store.load(tiny_model_dir)
    with torch.no_grad():
        x, mask = loaded.model.eval().embed(to_tensors(explainable_rows(loaded, 40, 6)))
    forward, built = aot.compiled_forward(loaded, torch.bfloat16, 16, loaded.config.model.max_length, str(tmp_path))
    assert built
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = loaded.model.encode(x, mask)
    got = forward(x, mask)
    for head in got:
        torch.testing.assert_close(got[head].float(), want[head].float(), rtol=0.02, atol=0.02)
    so = aot.package_dir(loaded, torch.bfloat16, str(tmp_path)) / "model.so"
    with open(so, "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 8)
    with pytest.raises(ValueError, match="sha256"):
        aot.load(so.parent, aot.heads_of(loaded))
    # a small run does not build: it removes the damaged package and runs eager
    assert aot.compiled_forward(loaded, torch.bfloat16, 16, loaded.config.model.max_length, str(tmp_path),
                                build_missing=False) == (None, False)
    assert not so.parent.exists()
    _, built = aot.compiled_forward(loaded, torch.bfloat16, 16, loaded.config.model.max_length, str(tmp_path))
    assert built


def test_prune_removes_packages_unused_for_long_and_stale_builds(tmp_path):
    import os
    import time

    old = time.time() - (aot.UNUSED_DAYS + 1) * 86400

    def make(name: str, record: bool, age: float | None = None) -> None:
        (tmp_path / name).mkdir()
        marker = tmp_path / name / "package.json" if record else tmp_path / name
        if record:
            marker.write_text("{}")
        if age is not None:
            os.utime(marker, (age, age))

    make("v1-unused", record=True, age=old)
    make("v2-recent", record=True)
    make("v3-unfinished", record=False)
    make(".v4.dead", record=False, age=old)
    make(".v5.building", record=False)
    assert sorted(aot.prune(tmp_path)) == [".v4.dead", "v1-unused", "v3-unfinished"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".v5.building", "v2-recent"]


def test_unusable_compiled_cache_falls_back_to_jit_compilation(tiny_model_dir, tmp_path, capsys):
    """A cache location that cannot hold packages (here a file) costs speed, not the run: the
    model is JIT-compiled instead, with the eager model's scores and reasons."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    predictor = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16, compile=True,
                          compiled_cache=str(blocker))
    ids = explainable_rows(predictor.loaded, 40, 7)
    explain = dict(explain=lambda pd: pd > np.median(pd))
    eager = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16).predict(ids, **explain)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got = predictor.predict(ids, **explain)
    assert "JIT-compiled: no compiled package" in capsys.readouterr().out
    assert predictor.encode != predictor.model.encode and not hasattr(predictor.encode, "constants")  # JIT ran
    # one graph for every batch: the gradient pass switches attention and back between them
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1
    np.testing.assert_allclose(got.pd, eager.pd, rtol=1e-4)
    np.testing.assert_allclose(got.propensity, eager.propensity, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(got.explained, eager.explained)
    np.testing.assert_allclose(got.contrib, eager.contrib, rtol=1e-3, atol=1e-6)


def test_keep_heap_stops_large_buffers_faulting_in_again():
    """After keep_heap a freed 8 MiB buffer is reused from the heap: allocating and filling it
    again costs no fresh pages (glibc's default would map new, zeroed pages each time)."""
    import resource
    import sys

    from nightscore.scoring.execution import keep_heap

    if not sys.platform.startswith("linux") or not keep_heap():
        pytest.skip("not glibc")

    def cycle() -> None:
        torch.empty(8 << 20, dtype=torch.uint8).fill_(1)

    for _ in range(5):  # the heap grows to hold it once
        cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        cycle()
    # 20 fresh 8 MiB buffers are 40,960 page faults; at most two of them may still be fresh
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before <= 2 * 2048


@pytest.mark.parametrize("kv_heads,masked", [(4, True), (4, False), (2, True)])
def test_bmm_attention_matches_scaled_dot_product_attention(kv_heads, masked):
    """The packages' attention computes what PyTorch's SDPA does: padded keys get no weight,
    grouped key/value heads serve their query heads, and no mask means full attention."""
    import torch.nn.functional as F
    from transformers.masking_utils import bidirectional_mask_function, eager_mask


    torch.manual_seed(0)
    b, h, q, d = 3, 4, 7, 8
    query = torch.randn(b, h, q, d)
    key, value = torch.randn(b, kv_heads, q, d), torch.randn(b, kv_heads, q, d)
    lengths = torch.tensor([7, 5, 2])
    padding = (torch.arange(q)[None, :] < lengths[:, None]).long()
    mask = (eager_mask(b, q, q, mask_function=bidirectional_mask_function, attention_mask=padding.bool())
            if masked else None)
    got, _ = aot.bmm_attention(None, query, key, value, mask, scaling=0.3)
    group = h // kv_heads
    want = F.scaled_dot_product_attention(query, key.repeat_interleave(group, 1), value.repeat_interleave(group, 1),
                                          attn_mask=padding[:, None, None, :].bool() if masked else None, scale=0.3)
    torch.testing.assert_close(got, want.transpose(1, 2), rtol=1e-5, atol=1e-5)
    if masked:  # a padded key changes nothing
        value[1, :, 5:] = 100.0
        torch.testing.assert_close(aot.bmm_attention(None, query, key, value, mask, scaling=0.3)[0], got)


def _unavailable(*args, **kwargs):
    raise Unavailable("forced by the test")


def _same_results(got, want, rtol: float = 1e-4) -> None:
    np.testing.assert_allclose(got.pd, want.pd, rtol=rtol)
    np.testing.assert_allclose(got.propensity, want.propensity, rtol=rtol, atol=1e-6)
    np.testing.assert_array_equal(got.explained, want.explained)
    np.testing.assert_allclose(got.contrib, want.contrib, rtol=1e-3, atol=1e-6)


def test_one_line_says_the_path_and_why(tiny_model_dir, capsys):
    """The path is decided on the first batch, once, and said in one line."""
    predictor = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16)
    ids = explainable_rows(predictor.loaded, 40, 2)
    predictor.predict(ids)
    predictor.predict(ids)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[score]")]
    packed = "linears prepacked for oneDNN" if onednn_ready() else "oneDNN prepacked linears unavailable"
    assert len(lines) == 1 and lines[0].startswith("[score] model path: cpu, fp32 (asked), compile=false: eager; ")
    assert packed in lines[0] and "torch thread(s)" in lines[0]


def test_configure_process_sets_the_thread_count():
    threads = torch.get_num_threads()
    try:
        assert configure_process(torch.device("cpu"), 1, False).startswith("1 torch thread(s)")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("module", ["aot", "inference"])
def test_importing_changes_no_process_state(module):
    """Importing a scoring module alone, in a fresh process, works (no import cycle) and leaves the
    thread count, the attention registry and the compile flags as they were: settings are made
    when a Predictor is created (execution.configure_process)."""
    script = f"""
import torch, torch._dynamo.config as dynamo, torch._inductor.config as inductor
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

def state():
    return (torch.get_num_threads(), sorted(AttentionInterface._global_mapping),
            sorted(AttentionMaskInterface._global_mapping), inductor.freezing, dynamo.specialize_float)

before = state()
import nightscore.scoring.{module}
assert state() == before, (before, state())
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_scoring_modules_import_one_way():
    """No import cycle among the scoring modules, counting imports inside functions too."""
    folder = Path(aot.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {alias.name for alias in node.names}
        graph[path.stem] = {d.split(".")[0] for d in deps}
    assert "inference" not in graph["aot"] and "aot" in graph["execution"]

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in graph.get(start, ()))

    assert not [m for m in graph if reaches(m, m, set())]


def test_without_bf16_detection_auto_times_both_and_scores(tiny_model_dir, monkeypatch):
    """With torch's private bf16 checks gone, 'auto' times fp32 against bf16 and scores with the faster."""
    monkeypatch.setattr(torch_private, "cpu_bf16_units", _unavailable)
    loaded = store.load(tiny_model_dir)
    ids = explainable_rows(loaded, 40, 8)
    predictor = Predictor(loaded, precision="auto", micro_batch=16)
    got = predictor.predict(ids)
    want = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16).predict(ids)
    assert cpu_has_bf16()  # unknown counts as yes: measured, not guessed
    np.testing.assert_allclose(got.pd, want.pd, rtol=0.05, atol=1e-3)  # bf16, if it timed faster
    np.testing.assert_allclose(got.propensity, want.propensity, rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("private_api", ["onednn_pack", "onednn_linear"])
def test_without_onednn_prepacking_the_plain_linears_score(tiny_model_dir, monkeypatch, capsys, private_api):
    monkeypatch.setattr(torch_private, private_api, _unavailable)
    loaded = store.load(tiny_model_dir)
    ids = explainable_rows(loaded, 60, 4)
    explain = dict(explain=lambda pd: pd > np.median(pd))
    predictor = Predictor(loaded, precision="fp32", micro_batch=16, onednn=True)
    got = predictor.predict(ids, **explain)
    assert "oneDNN prepacked linears unavailable" in capsys.readouterr().out
    assert not any(isinstance(m, PackedLinear) for m in predictor.model.modules())
    want = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16, onednn=False).predict(ids, **explain)
    _same_results(got, want, rtol=1e-6)


def test_without_private_compile_apis_the_model_is_jit_compiled(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """No AOTInductor packaging and no Inductor flags: score.compile still compiles, through the
    public torch.compile, with the eager model's scores and reasons."""
    monkeypatch.setattr(torch_private, "aoti_compile", _unavailable)
    monkeypatch.setattr(torch_private, "set_compile_flags", _unavailable)
    predictor = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16, compile=True,
                          compiled_cache=str(tmp_path / "compiled"))
    ids = explainable_rows(predictor.loaded, 40, 7)
    explain = dict(explain=lambda pd: pd > np.median(pd))
    got = predictor.predict(ids, **explain)
    line = capsys.readouterr().out
    assert "JIT-compiled: no compiled package (Unavailable" in line and "compile flags unavailable" in line
    assert predictor.encode != predictor.model.encode and not hasattr(predictor.encode, "constants")
    _same_results(got, Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16).predict(ids, **explain))


@pytest.mark.slow
def test_without_the_private_package_runtime_apis_scoring_falls_back(tiny_model_dir, fp32_package, tmp_path,
                                                                      monkeypatch, capsys):
    """A package loaded without the runner's constant-buffer methods runs on the runtime's own
    weights; without the runner itself, a run that does not build scores eagerly. Same results."""
    loaded = store.load(tiny_model_dir)
    cache = str(tmp_path / "compiled")
    shutil.copytree(fp32_package, cache)  # the model's package, built
    ids = explainable_rows(loaded, 50, 5)
    explain = dict(explain=lambda pd: pd > np.median(pd))
    want = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16).predict(ids, **explain)

    monkeypatch.setattr(torch_private, "realign_constants", _unavailable)
    predictor = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16, compile="cached",
                          compiled_cache=cache)
    _same_results(predictor.predict(ids, **explain), want)
    assert predictor.encode.constants == {}  # the package ran, on the runtime's own copy of the weights

    monkeypatch.setattr(torch_private, "aoti_runner", _unavailable)
    predictor = Predictor(store.load(tiny_model_dir), precision="fp32", micro_batch=16, compile="cached",
                          compiled_cache=cache)
    _same_results(predictor.predict(ids, **explain), want)
    assert predictor.encode == predictor.model.encode
    assert "eager: no compiled package (Unavailable" in capsys.readouterr().out
    assert aot.package_dir(loaded, None, cache).exists()  # the package is fine: kept for runs that can load it
