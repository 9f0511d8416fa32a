"""bench/frontier.py: Pareto frontier against brute force, MACs and ratios by hand, the point cache, --quick."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: bench/ is not installed

from bench import frontier as fb  # noqa: E402
from bench.common import best_at, pareto_front  # noqa: E402
from flow.compress import compress, compression_report  # noqa: E402
from models import train as trainer  # noqa: E402


def brute_front(points):
    """Indices no other point dominates (>= in both, > in one); of exact duplicates the first."""
    out = []
    for i, p in enumerate(points):
        dominated = any((q["ratio"] >= p["ratio"] and q["acc"] >= p["acc"]
                         and (q["ratio"] > p["ratio"] or q["acc"] > p["acc"]))
                        or (q["ratio"] == p["ratio"] and q["acc"] == p["acc"] and j < i)
                        for j, q in enumerate(points) if j != i)
        if not dominated:
            out.append(i)
    return sorted(out, key=lambda i: (points[i]["ratio"], i))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 6)), max_size=12))
def test_pareto_front_matches_brute_force(pairs):
    # small integer grids: many ties in ratio, in accuracy and exact duplicates
    pts = [dict(ratio=float(r), acc=float(a)) for r, a in pairs]
    front = pareto_front(pts)
    assert front == brute_front(pts)
    # the frontier is the step function r -> best accuracy at ratio >= r
    for r in range(0, 8):
        assert best_at(pts, r) == best_at([pts[i] for i in front], r)
    accs = [pts[i]["acc"] for i in front]
    assert accs == sorted(accs, reverse=True) and len(set(accs)) == len(accs)


def test_best_at_and_other_keys():
    pts = [dict(x=1, y=5), dict(x=4, y=3), dict(x=8, y=1)]
    assert pareto_front(pts, "x", "y") == [0, 1, 2]
    assert best_at(pts, 2, "x", "y") == 3 and best_at(pts, 9, "x", "y") is None


def test_macs_by_hand_dense_mvq_and_pq():
    torch.manual_seed(0)
    net = trainer.build("lenet-digits", "digits").eval()
    # conv1 8x8x16x1x9, conv2 4x4x32x16x9, fc 128x64, fc 64x10
    dense = 8 * 8 * 16 * 9 + 4 * 4 * 32 * 16 * 9 + 128 * 64 + 64 * 10
    assert fb.count_macs(net, (1, 8, 8)) == {"macs": dense, "lookups": 0}
    c = compress(net, "mvq", n=1, m=4, k=8, d=8, skip=("first",), iters=2)
    assert fb.count_macs(c, (1, 8, 8))["macs"] == 8 * 8 * 16 * 9 + (dense - 8 * 8 * 16 * 9) // 4
    vq = compress(net, "vq", k=8, d=8, skip=("first",), iters=2)
    assert fb.count_macs(vq, (1, 8, 8))["macs"] == dense
    pq = compress(net, "pq", v=9, K=8, data=torch.rand(64, 1, 8, 8), skip=("first",))
    layers = [m for m in pq.modules() if hasattr(m, "prototypes")]
    assert len(layers) == 1  # conv2 (patch 144); the linears' lengths are not multiples of 9
    got = fb.count_macs(pq, (1, 8, 8))
    assert got["macs"] == 8 * 8 * 16 * 9 + 4 * 4 * (144 // 9) * 8 * 9 + 128 * 64 + 64 * 10
    assert got["lookups"] == 4 * 4 * (144 // 9) * 32


def test_ratios_with_and_without_masks():
    torch.manual_seed(0)
    net = trainer.build("lenet-digits", "digits").eval()
    c = compress(net, "mvq", n=2, m=4, k=16, d=8, skip=("first",), iters=2)
    rep = compression_report(c, dense_bits=8)
    masks = sum(r.bits.get("masks", 0) for r in rep.rows)
    assert masks > 0
    r = fb.ratios(c)
    assert r["ratio"] == rep.ratio and r["mask_bits"] == masks
    assert r["ratio_nomask"] == rep.float_bits / (rep.total_bits - masks) > r["ratio"]
    assert r["dense_layers"] == ["features.0"]
    v = fb.ratios(compress(net, "vq", k=16, d=8, skip=("first",), iters=2))
    assert v["ratio"] == v["ratio_nomask"] == pytest.approx(r["ratio_nomask"])  # same k, d: same bits sans masks


def test_int8_reference_quantizes_every_dense_layer():
    torch.manual_seed(0)
    net = trainer.build("lenet-digits", "digits").eval()
    w = net.features[0].weight.detach().clone()
    assert fb.quantize_dense_int8_(net) == 4
    scale = float(w.abs().max()) / 127
    torch.testing.assert_close(net.features[0].weight.detach(), torch.round(w / scale) * scale)


def test_spec_key_cache_roundtrip_and_atomic_store(tmp_path, monkeypatch):
    monkeypatch.setenv("VQHLS_CACHE", str(tmp_path))
    setup = fb.QUICK_SETUPS["lenet-digits"]
    a = fb.point_spec("lenet-digits", setup, "vq", dict(k=16, d=4))
    b = fb.point_spec("lenet-digits", setup, "vq", dict(k=16, d=8))
    assert fb.key(a) == fb.key(json.loads(json.dumps(a))) != fb.key(b)
    assert fb.point_spec("lenet-digits", setup, "vq", dict(k=16, d=4), check=True)["budget"]["ft_epochs"] == \
        2 * a["budget"]["ft_epochs"]
    m = fb.point_spec("lenet-digits", setup, "mvq", dict(n=2, m=4, k=16, d=4, importance="taylor"))
    assert m["prune"]["importance"] == "taylor" and m["knobs"]["importance"] == "taylor"
    assert fb.cached(a) is None
    path = fb.store_point(a, {"acc": 1.0})
    assert path.parent == tmp_path / "frontier" / "points" and path.name == f"{fb.key(a)}.json"
    assert fb.cached(a) == {"acc": 1.0} and fb.cached(b) is None
    assert not list(path.parent.glob("*.tmp"))
    path.write_text(json.dumps({"spec": b, "result": {"acc": 2.0}}))  # a hash collision is not trusted
    assert fb.cached(a) is None
    path.write_text("{truncated")
    assert fb.cached(a) is None


def test_shared_mask_specs_keep_old_keys_and_get_their_own_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("VQHLS_CACHE", str(tmp_path))
    setup = fb.SETUPS["resnet20"]
    per = fb.point_spec("resnet20", setup, "mvq", dict(n=2, m=4, k=64, d=8, importance="magnitude"))
    one = fb.point_spec("resnet20", setup, "mvq", dict(n=2, m=4, k=64, d=8, importance="magnitude", mask_group=1))
    four = fb.point_spec("resnet20", setup, "mvq", dict(n=2, m=4, k=64, d=8, importance="magnitude", mask_group=4))
    assert one == per and "mask_group" not in per["knobs"] and "mask_group" not in per["prune"]
    assert four["knobs"]["mask_group"] == four["prune"]["mask_group"] == 4 and fb.key(four) != fb.key(per)
    assert fb.key(four["prune"]) != fb.key(per["prune"]) and fb._stage_path(four["prune"]).name.endswith(
        f"-2of4-magnitude-g4-{fb.key(four['prune'])}.pt")
    assert fb.label("mvq", four["knobs"]) == "2:4 k=64 d=8 g=4" and fb.series(dict(method="mvq",
                                                                                  knobs=four["knobs"])) == "mvq g=4"
    assert fb.shared_groups() == (4, 8)  # EngineConfig().cols is 8: a group of 8 is one column tile
    pts = fb.grid("resnet20", quick=False)
    shared = [p for p in pts if p["knobs"].get("mask_group", 1) != 1]
    assert len(shared) == 2 * 3 * 2 * 3 and {p["knobs"]["mask_group"] for p in shared} == {4, 8}
    tasks, points = fb.plan_tasks(["resnet20"], {"resnet20": setup}, quick=False, jobs=2)
    sel, need = fb.select_points(points, tasks, lambda p: fb.series(p) != p["method"])
    assert len(sel) == 36 and sorted(n for n in need if "/prune" in n) == sorted(
        f"resnet20/prune {nm} magnitude g={g}" for nm in ("1:4", "2:4", "2:8") for g in (4, 8))
    assert "resnet20/baseline" in need and len(need) == 36 + 6 + 1


def test_group_overrides_only_where_g_does_not_divide():
    net = trainer.build("lenet-digits", "digits")  # Cout 16, 32, 64, 10
    assert fb.group_overrides(net, 4, ["first"]) == {"classifier.3": dict(mask_group=2)}
    assert fb.group_overrides(net, 8, ["first", "last"]) == {}
    assert fb.group_overrides(net, 64, ["first"]) == {"features.4": dict(mask_group=32),
                                                      "classifier.3": dict(mask_group=2)}


def test_frontiers_split_by_mask_group_and_merge_rows():
    def row(name, g, ratio, acc, method="mvq"):
        knobs = dict(n=2, m=4, k=16, d=8, **({"mask_group": g} if g != 1 else {}))
        return dict(name=name, model="m", method=method, knobs=knobs if method == "mvq" else {}, check=False,
                    ratio=ratio, ratio_nomask=ratio * 1.5, acc=acc, macs=1e6)
    rows = [row("a", 1, 10, 90), row("b", 1, 20, 80), row("c", 4, 12, 91), row("d", 4, 11, 89), row("e", 8, 13, 85),
            row("v", 1, 15, 88, "vq"), row("f", 1, 1, 95, "float"), row("i", 1, 4, 94, "int8")]
    fr = fb.frontiers(rows)["m"]
    assert list(fr) == ["float", "int8", "vq", "mvq", "mvq (no masks)", "mvq g=4", "mvq g=8"]
    assert [rows[i]["name"] for i in fr["mvq g=4"]] == ["c"] and [rows[i]["name"] for i in fr["mvq"]] == ["a", "b"]
    assert fb.best_point(rows, fr["mvq g=4"], 12)["name"] == "c" and fb.best_point(rows, fr["mvq g=8"], 14) is None
    merged = {"rows": [dict(r, acc=r["acc"]) for r in rows], "baselines": {"m": {"acc": 95, "curve": [95]}}}
    new = [row("c", 4, 12, 91.5), row("f", 1, 1, 95, "float"), row("i", 1, 4, 94, "int8")]
    out, info = fb.merge_rows(new, merged, ["m"], {"m": {"acc": 95, "curve": [95]}})
    assert sorted(r["name"] for r in out) == sorted(r["name"] for r in rows)
    assert next(r for r in out if r["name"] == "c")["acc"] == 91.5 and not next(r for r in out if r["name"] == "c").get(
        "merged") and next(r for r in out if r["name"] == "a")["merged"]
    assert info["checks"]["m"]["curve_equal"] and info["same_baseline"]
    out, info = fb.merge_rows(new, merged, ["m"], {"m": {"acc": 95, "curve": [94]}})
    assert "NOT the same" in info["text"]


@pytest.mark.slow
def test_quick_run_is_pareto_has_every_method_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("VQHLS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert fb.main(["--quick", "--jobs", "2", "--out", str(out)]) == 0
    data = json.loads((out / "frontier_quick.json").read_text())
    assert (out / "frontier_quick.png").stat().st_size > 0
    rows = data["rows"]
    assert all("acc" in r for r in rows), [r["name"] for r in rows if "acc" not in r]
    fr = data["frontiers"]["lenet-digits"]
    assert set(fr) >= {"float", "int8", "vq", "mvq", "mvq (no masks)", "pq", "vecq"}
    by_name = {r["name"]: r for r in rows}
    assert {"mvq g=4", "mvq g=8"} <= set(fr)
    for meth, names in fr.items():
        x = "ratio_nomask" if meth == "mvq (no masks)" else "ratio"
        base = "mvq" if meth == "mvq (no masks)" else meth
        pts = [dict(ratio=r[x], acc=r["acc"], name=r["name"]) for r in rows if fb.series(r) == base and not r["check"]]
        assert names == [pts[i]["name"] for i in brute_front(pts)], meth
        assert all(fb.series(by_name[n]) == base for n in names)
    for r in rows:
        if r["method"] == "mvq":  # N/M of the compressed layers' MACs, the first conv dense
            first = 8 * 8 * 16 * 9
            assert r["macs"] == first + (by_name["lenet-digits/float -"]["macs"] - first) * r["knobs"]["n"] \
                // r["knobs"]["m"]
            assert r["ratio_nomask"] > r["ratio"] and r["diag"]["bpw_mask"] > 0
    # shared masks: the mask bits are the per-channel run's / g on every layer that shares by g (the classifier's
    # 10 outputs share by gcd(10, g) = 2), everything else the same bits
    per = by_name["lenet-digits/mvq 2:4 k=16 d=4"]
    sh = by_name["lenet-digits/mvq 2:4 k=16 d=4 g=4"]
    assert sh["extra"]["mask_group_overrides"] == {"classifier.3": 2}
    w = {"features.4": 32 * 16 * 9, "classifier.1": 64 * 128, "classifier.3": 10 * 64}
    assert per["mask_bits"] == sum(w.values()) // 4 * 3
    assert sh["mask_bits"] == (w["features.4"] + w["classifier.1"]) // (4 * 4) * 3 + w["classifier.3"] // (4 * 2) * 3
    assert sh["stored_bits"] - sh["mask_bits"] == per["stored_bits"] - per["mask_bits"]
    assert sh["macs"] == per["macs"]
    assert "epochs" in data["budget"]["lenet-digits"] and data["baselines"]["lenet-digits"]["curve"]
    # a second run finds every point in the cache and reports the same numbers
    assert fb.main(["--quick", "--backend", "serial", "--out", str(out)]) == 0
    again = json.loads((out / "frontier_quick.json").read_text())
    assert [(r["name"], r["acc"], r["ratio"]) for r in again["rows"]] == [(r["name"], r["acc"], r["ratio"]) for r in rows]
    assert again["frontiers"] == data["frontiers"]
    # only the shared-mask points (and float / int8), the rest merged from the first run's file
    out2 = tmp_path / "out2"
    assert fb.main(["--quick", "--backend", "serial", "--only-shared", "--merge", str(out / "frontier_quick.json"),
                    "--out", str(out2)]) == 0
    merged = json.loads((out2 / "frontier_quick.json").read_text())
    assert merged["merge"]["same_baseline"] and merged["only_shared"]
    assert sorted((r["name"], r["acc"], r["ratio"]) for r in merged["rows"]) == \
        sorted((r["name"], r["acc"], r["ratio"]) for r in rows)
    assert {r["name"] for r in merged["rows"] if not r.get("merged")} == \
        {n for n in by_name if " g=" in n or n.split("/")[1].split()[0] in ("float", "int8")}
    assert merged["frontiers"] == data["frontiers"]
