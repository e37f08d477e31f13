"""data: the simulator, the validating loader, splits, LLMTIME text and training windows."""

from __future__ import annotations

import ast
from pathlib import Path

import h5py
import numpy as np
import pytest

from data import DataError, decode, encode, load_series, make_splits, make_windows, prompt, scale_for, write_series
from data.simulate import ensure_data, integrate, main as simulate_main, simulate, summary
from data.windows import tokenize_series

from .conftest import QWEN_TOKENIZER, ROOT, needs_qwen_tokenizer

REFERENCE = {"prey": {"max": 13.7, "mean": 1.70, "p99": 7.1, "below_0.1": 0.016},
             "predator": {"max": 4.8, "mean": 0.57, "p99": 1.70, "below_0.1": 0.085}}


def test_data_imports_nothing_else_of_ours():
    for path in (ROOT / "data").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] not in {"qwen_min", "lora", "flops"}, path
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] in {"qwen_min", "lora", "flops"} for a in node.names), path


# --- simulator -------------------------------------------------------------------------------------

def test_simulation_is_deterministic_and_of_the_format():
    a, time, params = simulate(systems=20, seed=3)
    b, _, _ = simulate(systems=20, seed=3)
    c, _, _ = simulate(systems=20, seed=4)
    assert a.shape == (20, 100, 2) and a.dtype == np.float32 and time.dtype == np.float64
    np.testing.assert_array_equal(time, np.linspace(0, 200, 100))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    np.testing.assert_allclose(a[:, 0, 0], params["x0"], rtol=1e-6)
    assert a.min() >= 0


def test_summary_of_the_default_set_is_within_15_percent_of_the_reference():
    trajectories, _, _ = simulate()  # 1,000 systems, seed 0
    got = summary(trajectories)
    for species, figures in REFERENCE.items():
        for name, want in figures.items():
            assert abs(got[species][name] / want - 1) <= 0.15, (species, name, got[species][name], want)


def test_classical_model_conserves_its_invariant():
    """Classical Lotka-Volterra keeps V = c b x - g ln x + b y - a ln y constant: the integration is accurate."""
    rng = np.random.default_rng(0)
    params = {k: rng.uniform(lo, hi, 3) for k, (lo, hi) in
              {"a": (0.1, 0.3), "b": (0.1, 0.3), "g": (0.1, 0.3), "c": (0.3, 0.7), "x0": (0.8, 1.2), "y0": (0.8, 1.2)}.items()}
    traj = integrate(params, np.linspace(0, 200, 100), model="classical")
    x, y = traj[..., 0], traj[..., 1]
    a, b, g, c = (params[k][:, None] for k in "abgc")
    invariant = c * b * x - g * np.log(x) + b * y - a * np.log(y)
    assert np.ptp(invariant, axis=1).max() < 1e-5


def test_simulate_command_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "lv.h5"
    assert simulate_main(["--out", str(out), "--systems", "12", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "prey" in printed and "predator" in printed and "p99" in printed
    series = load_series(out)
    assert series.trajectories.shape == (12, 100, 2)


def test_missing_default_data_is_simulated_and_announced(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    series = ensure_data()
    assert series.trajectories.shape == (1000, 100, 2)
    assert Path("data/lotka_volterra_data.h5").is_file()
    assert "data/lotka_volterra_data.h5 was missing: simulated" in capsys.readouterr().err


# --- loader ----------------------------------------------------------------------------------------

def write_raw(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


GOOD_T = np.linspace(0, 200, 100)


@pytest.mark.parametrize("datasets, message", [
    ({"time": GOOD_T}, "missing dataset /trajectories"),
    ({"trajectories": np.ones((3, 100, 2))}, "missing dataset /time"),
    ({"trajectories": np.ones((3, 100)), "time": GOOD_T}, r"/trajectories has shape \(3, 100\), expected \(systems, points, 2\)"),
    ({"trajectories": np.ones((3, 100, 3)), "time": GOOD_T}, r"/trajectories has shape \(3, 100, 3\)"),
    ({"trajectories": np.ones((3, 90, 2)), "time": GOOD_T}, "/time has 100 points but /trajectories has 90 per system"),
    ({"trajectories": np.ones((0, 100, 2)), "time": GOOD_T}, "holds no systems"),
    ({"trajectories": np.ones((3, 100, 2)), "time": np.ones((100, 1))}, r"/time has shape \(100, 1\), expected \(points,\)"),
])
def test_malformed_files(tmp_path, datasets, message):
    path = write_raw(tmp_path / "bad.h5", **datasets)
    with pytest.raises(DataError, match=message) as info:
        load_series(path)
    assert str(path) in str(info.value)


def test_non_finite_and_negative_values(tmp_path):
    traj = np.ones((3, 100, 2), dtype=np.float32)
    traj[1, 7, 0] = np.nan
    with pytest.raises(DataError, match="non-finite value at system 1, point 7"):
        load_series(write_raw(tmp_path / "nan.h5", trajectories=traj, time=GOOD_T))
    traj[1, 7, 0] = -0.5
    with pytest.raises(DataError, match="negative population -0.5 at system 1, point 7"):
        load_series(write_raw(tmp_path / "neg.h5", trajectories=traj, time=GOOD_T))


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(DataError, match="nope.h5: file not found"):
        load_series(tmp_path / "nope.h5")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(DataError, match="text.h5: not an HDF5 file"):
        load_series(text)


def test_any_file_of_the_format_loads(tmp_path):
    traj = np.random.default_rng(0).uniform(0, 3, (7, 50, 2)).astype(np.float64)  # other sizes, float64
    series = load_series(write_raw(tmp_path / "other.h5", trajectories=traj, time=np.arange(50.0)))
    assert series.systems == 7 and series.points == 50 and series.trajectories.dtype == np.float32


def test_write_refuses_wrong_shapes(tmp_path):
    with pytest.raises(DataError, match="refusing to write"):
        write_series(tmp_path / "x.h5", np.ones((2, 5, 3)), np.arange(5.0))
    assert not (tmp_path / "x.h5").exists()


# --- splits ----------------------------------------------------------------------------------------

def test_splits_are_seeded_disjoint_and_complete():
    s = make_splits(1000)
    assert len(s["train"]) == 850 and len(s["validation"]) == 150
    assert sorted(s["train"] + s["validation"]) == list(range(1000))
    assert s == make_splits(1000, seed=0) != make_splits(1000, seed=1)
    small = make_splits(20)
    assert len(small["validation"]) == 3 and len(small["train"]) == 17


# --- text ------------------------------------------------------------------------------------------

def test_encode_format_and_round_trip():
    values = np.array([[1.3612, 1.5], [0.27, 1.4749], [9.9, 0.004]])
    alpha = 2.0
    text = encode(values, alpha)
    assert text == "0.68,0.75;0.14,0.74;4.95,0.00"
    back, report = decode(text, alpha)
    assert report.recovered == 3 and report.skipped == 0
    assert np.abs(back / alpha - values / alpha).max() <= 0.005 + 1e-12


def test_scale_keeps_every_value_below_ten():
    traj, _, _ = simulate(systems=50, seed=0)
    alpha = scale_for(traj)
    assert np.isclose(traj.max() / alpha, 9.9)
    text = ";".join(encode(v, alpha) for v in traj)
    assert all(len(n.split(".")[0]) == 1 for step in text.split(";") for n in step.split(","))


@pytest.mark.parametrize("text, expected, skipped, repaired", [
    ("0.68,0.75;0.53,0.5", [[0.68, 0.75]], 1, 0),                    # truncated last step (2 decimals expected)
    ("0.68,0.75;0.53", [[0.68, 0.75]], 1, 0),                        # last step with one value
    ("0.68,0.75;0.53,0.56;", [[0.68, 0.75], [0.53, 0.56]], 0, 0),    # trailing separator
    ("0.68,0.750.53,0.56", [[0.68, 0.75], [0.53, 0.56]], 0, 1),      # missing ';': two numbers run together
    ("0.68,0.75;0.5.1,0.2;", [[0.68, 0.75], [0.5, 0.2]], 0, 1),       # two dots, not two numbers: cut
    ("0.68,0.75,0.53,0.56;0.1,0.2;", [[0.68, 0.75], [0.53, 0.56], [0.1, 0.2]], 0, 0),  # ',' for ';'
    ("0.68,0.75;;;0.53,0.56;", [[0.68, 0.75], [0.53, 0.56]], 0, 0),  # extra separators
    ("0.68,,0.75;0.53,;", [[0.68, 0.75]], 1, 0),                      # empty values
    ("1.2.3,0.75;0.5,0.5;", [[1.2, 0.75], [0.5, 0.5]], 0, 1),        # two dots: cut at the second
    ("abc;0.1,x;-0.5,0.2;0.3,0.4;", [[0.3, 0.4]], 3, 0),             # not numbers
    ("", [], 0, 0),
])
def test_decoding_malformed_output(text, expected, skipped, repaired):
    values, report = decode(text, alpha=1.0, decimals=2)
    np.testing.assert_allclose(values, np.array(expected, dtype=float).reshape(-1, 2))
    assert (report.recovered, report.skipped, report.repaired) == (len(expected), skipped, repaired)


def test_decode_scales_back_to_original_units():
    values, _ = decode("1.00,2.00;", alpha=3.0)
    np.testing.assert_allclose(values, [[3.0, 6.0]])


# --- windows and prompts ---------------------------------------------------------------------------

def test_windows_stride_padding_and_mask():
    seqs = [list(range(1, 1001)), list(range(1, 301))]
    w = make_windows(seqs, chunk=512, stride=268, pad_id=0)
    # 1000 tokens: starts 0, 268, 536 (536 + 512 >= 1000); 300 tokens: one window
    assert w["input_ids"].shape == (4, 512)
    assert w["input_ids"][1, 0].item() == 269 and w["input_ids"][2, 0].item() == 537
    last = w["attention_mask"][2]
    assert last.sum().item() == 1000 - 536
    assert (w["labels"][2][last == 0] == -100).all() and (w["labels"][2][last == 1] == w["input_ids"][2][last == 1]).all()
    assert w["attention_mask"][3].sum().item() == 300
    assert (w["attention_mask"][0] == 1).all()


def test_prompt_is_the_context_ending_with_a_separator():
    values = np.arange(200, dtype=float).reshape(100, 2) / 100
    text = prompt(values, ctx=40)
    assert text.endswith(";") and text.count(";") == 40
    back, report = decode(text)
    assert report.recovered == 40 and np.allclose(back, values[:40])


@needs_qwen_tokenizer
def test_qwen_tokenizer_one_token_per_character():
    from qwen_min import load_tokenizer

    tok = load_tokenizer(QWEN_TOKENIZER)
    traj, _, _ = simulate(systems=5, seed=0)
    alpha = scale_for(traj)
    for text, ids in zip((encode(v, alpha) for v in traj), tokenize_series(traj, alpha, tok.encode)):
        assert len(ids) == len(text)
        assert set(ids) <= {11, 13, 26, *range(15, 25)}
    assert tok.encode("0.25,1.50;") == [15, 13, 17, 20, 11, 16, 13, 20, 15, 26]
