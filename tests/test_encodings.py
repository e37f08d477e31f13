"""The three encodings: exact round trips at their resolution, the continuous model's FLOPs against
FlopCounterMode, forecasts that parse on the tiny preset, resume, LoRA adapters with value layers,
and the mistakes each refuses."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

import eval as eval_script
import lora
import train
from data import decode, encode, make_windows, scale_for
from data.encodings import bin_words, jitter
from data.windows import make_value_windows
from experiment.encodings import encoding_of
from experiment.forecast import evaluate
from experiment.folders import resume_settings
from experiment.settings import EvalSettings
from flops import EXACT, Ledger
from qwen_min import LoadError, load_pretrained, save_pretrained
from qwen_min.continuous import LOG_IN_OPS, LOG_OFFSET, QwenForValueForecasting, ValueSpec, forecast_values, value_loss
from qwen_min.tokenizer import bins_tokenizer, number_tokenizer
from qwen_min.weights import load_tokenizer, open_model

from .test_flops import INPLACE_ADDMM

SERIES = (40, 11)  # systems, seed of the simulated file (conftest.series_file)


def two_decimal_series(rng, steps=30) -> np.ndarray:
    """Values that are exactly representable at 2 decimals after scaling by alpha = 1."""
    return np.round(rng.uniform(0, 9.99, size=(steps, 2)), 2)


# --- round trips -----------------------------------------------------------------------------------

def test_digits_round_trip_exactly_at_two_decimals():
    values = two_decimal_series(np.random.default_rng(0))
    tok = number_tokenizer()
    ids = tok.encode(encode(values, 1.0, 2))
    assert len(ids) == 10 * len(values) - 1  # "0.68,0.75;" is ten tokens, the last ';' left out
    back, report = decode(tok.decode(ids) + ";", 1.0, 2)
    assert report.recovered == len(values) and np.array_equal(back, values)


def test_bins_are_one_token_per_value_and_round_trip_exactly():
    values = two_decimal_series(np.random.default_rng(1))
    tok = bins_tokenizer()
    words = bin_words(2)
    assert len(words) == 1000 and words[0] == "0.00" and words[-1] == "9.99"
    assert tok.value_words == {w: i for i, w in enumerate(words)}
    ids = tok.encode(encode(values, 1.0, 2) + ";")
    assert len(ids) == 4 * len(values)  # value , value ;
    assert ids[0::4] == [round(v * 100) for v in values[:, 0]]  # a bin's id is its value times 100
    assert ids[2::4] == [round(v * 100) for v in values[:, 1]]
    back, report = decode(tok.decode(ids), 1.0, 2)
    assert report.recovered == len(values) and np.array_equal(back, values)
    # a sample stays within its bin
    drawn = jitter(np.full((1000, 2), 5.0), 2.0, 2, np.random.default_rng(0))  # alpha 2: bins 0.02 wide
    assert np.all(np.abs(drawn - 5.0) <= 0.01) and drawn.std() > 0.004


def test_continuous_windows_keep_values_exactly_in_float32():
    rng = np.random.default_rng(2)
    series = [rng.uniform(0, 9.9, size=(100, 2)).astype(np.float32) for _ in range(3)]
    w = make_value_windows(series, chunk=64, stride=64)
    assert w["values"].shape == (6, 64, 2) and w["values"].dtype == torch.float32
    assert torch.equal(w["values"][0], torch.from_numpy(series[0][:64]))
    assert torch.equal(w["values"][1, :36], torch.from_numpy(series[0][64:]))
    assert (w["labels"][1, 36:] == -100).all() and (w["labels"][1, :36] == 0).all()


# --- the continuous model's FLOPs ------------------------------------------------------------------

def counted(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=INPLACE_ADDMM) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("spec", [ValueSpec(1, "log"), ValueSpec(3, "linear")])
def test_continuous_linear_flops_equal_flop_counter(spec):
    model = load_pretrained("tiny-random", encoding="continuous", spec=spec)
    values = torch.rand(1, 13, 2) * 9
    want = counted(lambda: model.value_head(model(values)))
    assert model.flops(13, EXACT).matmul == want
    # with LoRA on the attention the adapters are counted too
    lora.inject(model, rank=4, verbose=False)
    want = counted(lambda: model.value_head(model(values)))
    assert model.flops(13, EXACT).matmul == want > model.flops(13, EXACT).matmul - 1
    # the head on fewer positions, as training charges it
    one_head = counted(lambda: model.value_head(torch.zeros(1, 1, 64)))
    assert model.flops(13, EXACT, head_positions=12).matmul == want - one_head


@pytest.mark.parametrize("space", ["log", "linear"])
def test_continuous_forecast_charges_its_own_flops_per_call(space):
    """Two series, contexts of 5 and 9 steps, 3 samples each: one prefill of 9 steps per series,
    then 3 forward calls per context for all 6 rows."""
    model = load_pretrained("tiny-random", encoding="continuous", spec=ValueSpec(1, space))
    series = torch.rand(2, 9, 2) * 5
    outs = forecast_values(model, series, 4, contexts=[5, 9], samples=3, temperature=1.0)
    assert [o.shape for o in outs] == [(2, 3, 4, 2)] * 2 and outs.forward_calls == 1 + 2 * 3
    body = lambda n, past: model.model.flops(n, EXACT, past).forward  # noqa: E731
    to_log = LOG_IN_OPS * 2 if space == "log" else 0  # an add and a log per value
    embed = lambda n: 2 * n * 2 * 64 + n * 64 + n * to_log  # noqa: E731  (2 inputs -> 64 wide, and the bias)
    head = 4 * model.head_flops(1, EXACT).forward
    want = 2 * (body(9, 0) + embed(9)) + sum(6 * (sum(body(1, c + i) + embed(1) for i in range(3)) + head)
                                             for c in (5, 9))
    assert outs.flops == pytest.approx(want, rel=1e-12)
    # the evaluation's FLOPs bound holds it
    s = EvalSettings(ctx=[5, 9], horizon=4, samples=3)
    assert encoding_of("continuous").bound(model, None, series, 1.0, s.task, EXACT) >= outs.flops


def test_a_shared_context_forecasts_what_each_sample_s_own_prefill_does():
    """Causal attention: the first 5 steps of a 9-step prefill, repeated per sample, are a 5-step one."""
    model = load_pretrained("tiny-random", encoding="continuous")
    series = torch.rand(2, 9, 2) * 5
    shared = forecast_values(model, series, 4, contexts=[9, 5], samples=3, temperature=1.0,
                             generator=torch.Generator().manual_seed(3))
    alone = [forecast_values(model, series[:, :c].repeat_interleave(3, 0), 4, temperature=1.0, generator=gen)[0]
             for gen in [torch.Generator().manual_seed(3)] for c in (9, 5)]  # the same draws, in the same order
    for s, a in zip(shared, alone):
        assert torch.allclose(s, a.view(2, 3, 4, 2), atol=1e-5)
    assert not torch.allclose(shared[0][:, 0], shared[0][:, 1])  # samples differ


@pytest.mark.parametrize("space", ["log", "linear"])
def test_continuous_loss_is_the_mixture_likelihood(space):
    """Nats per step of the scaled values in both spaces: in log space, torch's own change of variables."""
    model = load_pretrained("tiny-random", encoding="continuous", spec=ValueSpec(2, space))
    values = torch.rand(2, 7, 2) * 5
    labels = torch.zeros(2, 7, dtype=torch.long)
    labels[1, 5:] = -100  # the last two steps of row 1 are padding: row 1 scores steps 1-4
    loss, n = value_loss(model, values, labels)
    assert n == 6 + 4
    hidden = model(values)
    log_w, means, scales = (x[..., 0, :, :] for x in model.mixture(hidden[:, :-1], values[:, :-1]))  # the one step
    dist = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=log_w),
                                                 torch.distributions.Normal(means, scales))
    if space == "log":  # v = exp(u) - LOG_OFFSET
        dist = torch.distributions.TransformedDistribution(dist, [torch.distributions.ExpTransform(),
                                                                  torch.distributions.AffineTransform(-LOG_OFFSET, 1.0)])
    nll = -dist.log_prob(values[:, 1:]).sum(-1)  # (2, 6)
    want = torch.cat([nll[0], nll[1, :4]]).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_a_value_spec_reads_back_what_it_saves_and_names_a_bad_key():
    """config.json and an adapter's metadata (strings) record a spec by the same keys, read by one
    piece of code: every field round-trips, a missing field reads as it was before it was a choice."""
    from qwen_min.continuous import ValueSpec
    for spec in (ValueSpec(), ValueSpec(3, "log", 20, "centred"), ValueSpec(2, "linear", 4)):
        assert ValueSpec.read(spec.saved()) == spec
        assert ValueSpec.read({k: str(v) for k, v in spec.saved().items()}, text=True) == spec
    assert ValueSpec.read({"value_components": 2}) == ValueSpec(2, "linear", 1, "level")
    assert ValueSpec.read({"value_steps": "20"}, components=3, text=True) == ValueSpec(3, "linear", 20)
    with pytest.raises(ValueError, match=r"^value_steps must be a positive integer, got '20'$"):
        ValueSpec.read({"value_components": 1, "value_steps": "20"})  # a string in config.json is not a count
    with pytest.raises(ValueError, match=r"^value_components must be a positive integer, got None$"):
        ValueSpec.read({})

def test_value_space_is_saved_and_a_model_from_before_it_reads_as_linear(tmp_path):
    model = load_pretrained("tiny-random", encoding="continuous")
    v = torch.tensor([0.0, 0.004, 1.23, 9.99])
    assert torch.allclose(model.from_space(model.to_space(v)), v, atol=1e-6)
    assert model.to_space(v)[0] == pytest.approx(np.log(LOG_OFFSET))  # 0 is finite in log space
    assert (model.from_space(torch.tensor([-30.0, 2.0])) >= 0).all()  # never below 0
    directory = tmp_path / "model"
    save_pretrained(model, directory)
    cfg = json.loads((directory / "config.json").read_text())
    assert (cfg["value_components"], cfg["value_space"]) == (1, "log")
    assert load_pretrained(directory).spec == ValueSpec(1, "log")
    del cfg["value_space"]
    (directory / "config.json").write_text(json.dumps(cfg))
    assert load_pretrained(directory).spec == ValueSpec(1, "linear")
    cfg["value_space"] = "cubic"
    (directory / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=r"config\.json: value_space must be one of log, linear, got 'cubic'"):
        load_pretrained(directory)


# --- forecasts of each encoding on the tiny preset ------------------------------------------------

@pytest.mark.parametrize("encoding,samples", [("digits", 1), ("bins", 1), ("bins", 3), ("continuous", 1),
                                              ("continuous", 3)])
def test_every_encoding_forecasts_every_step(series_file, tmp_path, encoding, samples):
    s = EvalSettings(model="tiny-random", encoding=encoding, data=str(series_file), limit=3, horizon=5,
                     ctx=[10, 20], samples=samples, temperature=1.0 if samples > 1 else 0.0, baselines=["persistence"],
                     out=str(tmp_path / "eval"), ledger=str(tmp_path / "ledger.json"), quiet=True, plot_systems=[0])
    results = evaluate(s)
    row = results["methods"]["model"]
    assert results["encoding"] == encoding and all(row["contexts"][str(c)]["failed_steps"] == 0 for c in (10, 20))
    saved = np.load(tmp_path / "eval" / "forecasts.npz")
    for ctx in (10, 20):
        fc = saved[f"model|{ctx}"]
        assert fc.shape == (3, 5, 2) and np.isfinite(fc).all() and (fc >= 0).all()
    ledger = Ledger.open(tmp_path / "ledger.json")
    assert ledger.total == pytest.approx(results["flops"]) and results["flops"] > 0


def test_bins_greedy_forecasts_are_bin_values(series_file, tmp_path):
    s = EvalSettings(model="tiny-random", encoding="bins", data=str(series_file), limit=2, horizon=4, ctx=[10],
                     baselines=["persistence"], out=str(tmp_path / "eval"), ledger=str(tmp_path / "l.json"), quiet=True,
                     plot_systems=[])
    results = evaluate(s)
    fc = np.load(tmp_path / "eval" / "forecasts.npz")["model|10"] / results["alpha"]
    assert np.allclose(fc * 100, np.round(fc * 100), atol=1e-6)  # every value a bin's 0.01 step


# --- training, resume, adapters -------------------------------------------------------------------

def args(series_file, tmp_path, *extra):
    return ["--model", "tiny-random", "--data", str(series_file), "--batch-size", "3", "--val-limit", "4",
            "--ledger", str(tmp_path / "ledger.json"), "--quiet", "--lr", "3e-3", *extra]


def strip(path):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


def test_continuous_run_learns_and_resume_equals_uninterrupted(series_file, tmp_path):
    common = ["--encoding", "continuous", "--full", "--chunk", "50", "--eval-every", "4", "--checkpoint-every", "3"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert train.main(args(series_file, whole, *common, "--max-steps", "20", "--out", str(whole / "run"))) == 0
    assert train.main(args(series_file, cut, *common, "--max-steps", "12", "--out", str(cut / "run"))) == 0
    assert train.main(["--resume", str(cut / "run"), "--max-steps", "20", "--quiet"]) == 0
    a = load_file(whole / "run/model_last/model.safetensors")
    b = load_file(cut / "run/model_last/model.safetensors")
    assert "embed_values.weight" in a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert strip(whole / "run/metrics.jsonl") == strip(cut / "run/metrics.jsonl")
    assert Ledger.open(cut / "ledger.json").total == Ledger.open(whole / "ledger.json").total
    vals = [m["val_loss"] for m in strip(whole / "run/metrics.jsonl") if m["val_loss"] is not None]
    assert vals[-1] < vals[0] - 0.5  # nats per step: it learns
    config = json.loads((whole / "run/config.json").read_text())
    assert config["encoding"] == "continuous" and open_model(whole / "run/model_best").encoding == "continuous"
    assert config["value_space"] == "log"  # the default
    del config["value_space"]  # a run from before the space was a choice modelled the values themselves
    (cut / "run/config.json").write_text(json.dumps(config))
    assert resume_settings(cut / "run").value_space == "linear"
    # the model directory loads as the continuous model it is, and eval.py reads its encoding from it
    model = load_pretrained(whole / "run/model_best")
    assert isinstance(model, QwenForValueForecasting)
    out = tmp_path / "eval"
    assert eval_script.main(["--model", str(whole / "run/model_best"), "--data", str(series_file), "--limit", "2",
                             "--ctx", "20", "--horizon", "5", "--baselines", "persistence", "--out", str(out),
                             "--ledger", str(tmp_path / "ledger.json"), "--quiet"]) == 0
    assert json.loads((out / "results.json").read_text())["encoding"] == "continuous"


def test_flops_sets_the_steps_the_budget_pays_for(series_file, tmp_path):
    out = tmp_path / "run"
    assert train.main(args(series_file, tmp_path, "--encoding", "bins", "--chunk", "100", "--eval-every", "5",
                           "--flops", "8e9", "--out", str(out))) == 0
    config = json.loads((out / "config.json").read_text())
    step, val = config["flops_per_full_step"], config["flops_per_validation"]
    steps = config["max_steps"]
    assert steps >= 1 and steps * step + -(-steps // 5) * val <= 8e9
    assert (steps + 1) * step + -(-(steps + 1) // 5) * val > 8e9
    assert json.loads((out / "summary.json").read_text())["steps"] == steps
    assert Ledger.open(tmp_path / "ledger.json").total <= 8e9


def test_continuous_lora_on_a_language_model_saves_and_loads_value_layers(series_file, tmp_path):
    """A pretrained (here tiny, random) Qwen directory: LoRA on the attention, the new layers in full."""
    directory = tmp_path / "qwen"
    save_pretrained(load_pretrained("tiny-random"), directory, tokenizer=load_tokenizer("tiny-random"))
    out = tmp_path / "run"
    assert train.main(args(series_file, tmp_path, "--model", str(directory), "--encoding", "continuous",
                           "--chunk", "50", "--rank", "2", "--max-steps", "6", "--eval-every", "3",
                           "--out", str(out))) == 0
    cfg = json.loads((out / "adapter_best/adapter_config.json").read_text())
    assert cfg["modules_to_save"] == list(lora.VALUE_LAYERS) and cfg["r"] == 2
    saved = load_file(out / "adapter_last/adapter_model.safetensors")
    assert {"base_model.model.embed_values.weight", "base_model.model.value_head.bias"} <= set(saved)
    assert lora.Adapter(out / "adapter_last").spec == ValueSpec(1, "log")
    trained = json.loads((out / "config.json").read_text())["trainable_parameters"]
    lora_only = sum(v.numel() for k, v in saved.items() if "lora_" in k)
    assert trained == sum(v.numel() for v in saved.values()) > lora_only
    # loads onto the language model wrapped as a continuous one, with the trained values
    base = load_pretrained(directory)
    model = QwenForValueForecasting.from_decoder(base.model, base.config, ValueSpec(1, "log"))
    lora.load_adapter(model, out / "adapter_last")
    assert torch.equal(model.value_head.bias, saved["base_model.model.value_head.bias"])
    # an adapter saved before the space was a choice (no value_space in the file's metadata) is linear
    old = tmp_path / "old_adapter"
    shutil.copytree(out / "adapter_last", old)
    save_file(saved, old / "adapter_model.safetensors", metadata={"format": "pt"})
    assert lora.Adapter(old).spec == ValueSpec(1, "linear")
    # and not onto the bare language model
    with pytest.raises(lora.adapter.LoadError, match="layer of a continuous model"):
        lora.load_adapter(load_pretrained(directory), out / "adapter_last")
    evals = tmp_path / "eval"
    assert eval_script.main(["--model", str(directory), "--adapter", str(out), "--no-base", "--data", str(series_file),
                             "--limit", "2", "--ctx", "20", "--horizon", "4", "--baselines", "persistence",
                             "--out", str(evals), "--ledger", str(tmp_path / "ledger.json"), "--quiet"]) == 0
    results = json.loads((evals / "results.json").read_text())
    assert results["encoding"] == "continuous" and results["methods"]["model+run"]["contexts"]["20"]["failed_steps"] == 0


@pytest.mark.parametrize("extra,message", [
    (["--encoding", "bins", "--decimals", "3"], "--encoding bins: the value vocabulary is 0.00 to 9.99, so --decimals must be 2"),
    (["--encoding", "continuous", "--components", "0"], "--components must be at least 1, got 0"),
    (["--encoding", "continuous", "--value-space", "cubic"], "--value-space: invalid choice: 'cubic'"),
    (["--encoding", "cubes"], "--encoding: invalid choice: 'cubes'"),
])
def test_bad_encoding_settings_are_one_line(series_file, tmp_path, capsys, extra, message):
    try:
        code = train.main(args(series_file, tmp_path, "--out", str(tmp_path / "run"), *extra))
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "ledger.json").exists()


def test_bins_on_a_language_model_and_disagreeing_encodings_are_refused(series_file, tmp_path, capsys):
    directory = tmp_path / "qwen"
    save_pretrained(load_pretrained("tiny-random"), directory, tokenizer=load_tokenizer("tiny-random"))
    code = train.main(args(series_file, tmp_path, "--model", str(directory), "--encoding", "bins",
                           "--out", str(tmp_path / "run")))
    err = capsys.readouterr().err
    assert code == 2 and "--encoding bins needs a preset" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    run = tmp_path / "cont"
    assert train.main(args(series_file, tmp_path, "--encoding", "continuous", "--chunk", "50", "--max-steps", "2",
                           "--out", str(run))) == 0
    code = eval_script.main(["--model", "tiny-random", "--adapter", str(run), "--encoding", "bins", "--data",
                             str(series_file), "--out", str(tmp_path / "e"), "--ledger", str(tmp_path / "ledger.json")])
    err = capsys.readouterr().err
    assert code == 2 and "the encodings disagree: --encoding bins reads bins" in err and "continuous" in err
    assert not (tmp_path / "e").exists()


def test_a_continuous_model_directory_is_trained_in_its_own_space(series_file, tmp_path, capsys):
    """--value-space defaults to log; a saved linear model is refused unless asked for as it is."""
    directory = tmp_path / "linear"
    save_pretrained(load_pretrained("tiny-random", encoding="continuous", spec=ValueSpec(1, "linear")), directory,
                    tokenizer=load_tokenizer("tiny-random", "continuous"))
    common = ["--model", str(directory), "--encoding", "continuous", "--chunk", "50", "--full", "--max-steps", "1"]
    code = train.main(args(series_file, tmp_path, *common, "--out", str(tmp_path / "run")))
    err = capsys.readouterr().err
    assert code == 2 and "is a continuous model of 1 component(s) in linear space over 1 step(s) reading level " \
                         "inputs; give --components 1 --value-space linear --head-steps 1 --value-inputs level" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert train.main(args(series_file, tmp_path, *common, "--value-space", "linear", "--out", str(tmp_path / "run"))) == 0
    # without --out, runs of the two spaces (and of another mixture) get folders of their own
    names = {train.settings_from_argv(["--model", "scratch-1m", *extra]).resolved().name
             for extra in ([], ["--value-space", "linear"], ["--components", "1"], ["--head-steps", "1"],
                           ["--world", "fitted"])}
    assert names == {"full-scratch-1m-continuous-k3-h20-lr0.0001-c100",
                     "full-scratch-1m-continuous-linear-k3-h20-lr0.0001-c100",
                     "full-scratch-1m-continuous-h20-lr0.0001-c100", "full-scratch-1m-continuous-k3-lr0.0001-c100",
                     "full-scratch-1m-continuous-k3-h20-fitted-lr0.0001-c100"}
    assert load_pretrained(tmp_path / "run/model_last").spec == ValueSpec(1, "linear")


def test_scale_and_windows_are_shared_by_the_token_encodings():
    """bins read the digits' text: the same scale, the same windows code, a quarter... of the positions."""
    values = two_decimal_series(np.random.default_rng(3), steps=50)
    alpha = scale_for(values)
    text = encode(values, alpha, 2)
    digits, bins = number_tokenizer().encode(text), bins_tokenizer().encode(text)
    assert len(digits) == 10 * 50 - 1 and len(bins) == 4 * 50 - 1
    w = make_windows([bins], chunk=64, stride=64)
    assert w["input_ids"].shape == (4, 64)


@pytest.mark.parametrize("extra", [["--full"], ["--rank", "2"]])
def test_planned_costs_of_a_continuous_run_equal_the_run_s(series_file, tmp_path, extra):
    """What the sweep plans on the meta device is what the run charges (value layers trained in both)."""
    from experiment.costs import planned_run
    from experiment.trainer import Trainer

    s = train.settings_from_argv(args(series_file, tmp_path, "--encoding", "continuous", "--chunk", "50",
                                      "--out", str(tmp_path / "run"), *extra))
    t = Trainer(s)
    step, val = planned_run(s, open_model(s.model), encoding_of(s.encoding), t.prep.val_ids, "exact")
    assert (step, val) == (t.full_step, t.eval_flops)
    assert sum(p.numel() for p in t.params) > (0 if s.full else sum(
        p.numel() for n, p in t.model.named_parameters() if "lora_" in n))


def test_prompt_continuation_reads_a_continuous_and_a_bins_model(tmp_path, capsys):
    from qwen_min.__main__ import main as qwen_main

    for encoding in ("continuous", "bins"):
        directory = tmp_path / encoding
        save_pretrained(load_pretrained("tiny-random", encoding=encoding), directory,
                        tokenizer=load_tokenizer("tiny-random", encoding))
        assert qwen_main(["--model", str(directory), "--prompt", "0.25,1.50;0.27,1.47;", "--max-new-tokens", "8",
                          "--numbers-only"]) == 0
        text = capsys.readouterr().out.strip()
        assert text.startswith("0.25,1.50;0.27,1.47;")
        if encoding == "continuous":  # 8 more steps
            values, report = decode(text, 1.0, 2)
            assert report.recovered == 10 and report.skipped == 0
        else:  # 8 tokens, each a value, ',' or ';' (a random model, no grammar)
            assert re.fullmatch(r"(\d\.\d\d|[,;]){8}", text[len("0.25,1.50;0.27,1.47;"):])
    assert qwen_main(["--model", str(tmp_path / "continuous"), "--prompt", "hello"]) == 2
    assert "holds no time step" in capsys.readouterr().err


def test_fp32_value_layers_run_on_a_bf16_decoder():
    """As LoRA trains them on a bf16 base: the value layers stay fp32, the cache takes the decoder's dtype."""
    model = load_pretrained("tiny-random", dtype="bf16", encoding="continuous")
    lora.inject(model, rank=2, verbose=False)
    model.embed_values.float().requires_grad_(True)
    model.value_head.float().requires_grad_(True)
    assert model.dtype == torch.bfloat16
    out = forecast_values(model, torch.rand(2, 5, 2) * 3, 3)[0]
    assert out.shape == (2, 1, 3, 2) and torch.isfinite(out).all()
    loss, _ = value_loss(model, torch.rand(2, 6, 2) * 3, torch.zeros(2, 6, dtype=torch.long))
    loss.backward()
    assert model.value_head.weight.grad is not None and model.value_head.weight.grad.dtype == torch.float32
