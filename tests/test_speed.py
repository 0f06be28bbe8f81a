"""The speed stage: log-scale intervals, verdicts from planted per-round times, speed.json merges,
and the `speed` command end to end. No test asserts a measured speed."""

import json
import math

import pytest

from mtl_bench import speed
from mtl_bench.aggregate import setting_label
from mtl_bench.cli import main
from mtl_bench.errors import UserError
from mtl_bench.train import canonical_task_options

REF_S = [1.00e-3, 1.30e-3, 0.90e-3, 1.10e-3, 1.05e-3]  # a noisy machine: rounds differ by 40%


def _entry(strategy, ratios, setting="clsreg", device="cpu", threads=1):
    """A speed entry whose per-round step times are the reference's times x ``ratios``."""
    times = [r * t for r, t in zip(ratios, REF_S)]
    return {"setting": setting, "task_pair": "clsreg", "options": {}, "architecture": "shared",
            "strategy": strategy, "code": f"{strategy}-v1", "reference_code": "fixed-v1",
            "batch_size": 32, "samples_per_step": 32, "device": device, "threads": threads,
            "machine": "m0", "torch": "t", "created": "2026-01-01T00:00:00Z", "rounds": 5,
            "steps": 20, **speed.summarise(times, REF_S, 32, strategy == "fixed")}


# -- statistics ----------------------------------------------------------------------------------
def test_log_interval_is_positive_and_holds_the_geometric_mean():
    values = [0.2, 3.0, 0.5, 2.0, 1.0]  # so spread out that a t-interval of values goes below 0
    centre, low, high = speed.log_interval(values)
    geo = math.exp(sum(math.log(v) for v in values) / len(values))
    assert centre == pytest.approx(geo)
    assert 0 < low < geo < high
    assert low * high == pytest.approx(geo * geo)  # symmetric on the log scale
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    assert mean - 2.776 * sd / math.sqrt(5) < 0  # the plain interval would go negative
    assert all(math.isnan(x) for x in speed.log_interval([1.0])[1:])


def test_ratio_inside_noise_is_no_clear_difference():
    e = _entry("dwa", [0.9, 1.1, 1.0, 0.95, 1.05])
    assert e["ratio_low"] < 1 < e["ratio_high"] and e["ratio_low"] > 0
    assert e["verdict"] == speed.NO_CLEAR
    # paired: the 40% swings of the machine between rounds do not widen the ratio's interval
    assert e["samples_per_s_high"] / e["samples_per_s_low"] > e["ratio_high"] / e["ratio_low"]


def test_ratio_around_two_is_slower_and_around_a_half_is_faster():
    slow = _entry("pcgrad", [1.9, 2.1, 2.0, 1.95, 2.05])
    assert slow["verdict"] == speed.SLOWER and 1 < slow["ratio_low"] < 2 < slow["ratio_high"]
    fast = _entry("rlw", [0.5, 0.52, 0.48, 0.51, 0.49])
    assert fast["verdict"] == speed.FASTER and fast["ratio_high"] < 1
    ref = _entry("fixed", [1.0] * 5)
    assert ref["verdict"] == speed.IS_REFERENCE and ref["ratio"] == 1.0
    assert all(e["samples_per_s_low"] > 0 for e in (slow, fast, ref))


# -- speed.json ----------------------------------------------------------------------------------
def test_merge_keeps_other_entries_and_replaces_the_same_key(tmp_path):
    first = [_entry("fixed", [1.0] * 5), _entry("dwa", [1.0] * 5), _entry("pcgrad", [2.0] * 5)]
    path, kept = speed.write_speed(tmp_path, first)
    assert path == tmp_path / "speed.json" and kept == 0
    # another measurement: pcgrad again, and fixed on 2 threads (another key)
    path, kept = speed.write_speed(tmp_path, [_entry("pcgrad", [3.0] * 5),
                                              _entry("fixed", [1.0] * 5, threads=2)])
    assert kept == 2
    df = speed.load_speed(tmp_path)
    assert list(df.columns) == speed.COLUMNS
    assert sorted(zip(df["strategy"], df["threads"])) == [
        ("dwa", 1), ("fixed", 1), ("fixed", 2), ("pcgrad", 1)]
    assert df.loc[df["strategy"] == "pcgrad", "ratio"].item() == pytest.approx(3.0)
    doc = json.loads(path.read_text())
    assert doc["format"] == speed.SPEED_FORMAT and doc["version"] == speed.SPEED_VERSION
    assert {"machine", "torch", "device", "threads", "created", "rounds", "steps"} <= set(
        doc["provenance"])


def test_load_speed_without_a_file_and_with_a_corrupt_one(tmp_path):
    df = speed.load_speed(tmp_path)
    assert df.empty and list(df.columns) == speed.COLUMNS
    (tmp_path / "speed.json").write_text('{"format": "mtl-bench-speed", "ver')
    with pytest.raises(UserError, match="is corrupt") as info:
        speed.load_speed(tmp_path)
    assert "\n" not in str(info.value)
    doc = {"format": speed.SPEED_FORMAT, "version": speed.SPEED_VERSION,
           "entries": [{"setting": "clsreg"}]}
    (tmp_path / "speed.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="entry 0 has no valid"):
        speed.load_speed(tmp_path)


# -- the command ---------------------------------------------------------------------------------
def test_speed_command_end_to_end_writes_and_merges(tmp_path, capsys):
    runs = tmp_path / "runs"
    tiny = ["--rounds", "2", "--steps", "2", "--runs-dir", str(runs), "--quiet"]
    assert main(["speed", "--strategy", "fixed,dwa", *tiny]) == 0
    out = capsys.readouterr().out
    assert "ratio to fixed [95% interval]" in out and "reference" in out
    dwa = next(line for line in out.splitlines() if line.strip().startswith("dwa"))
    assert any(v in dwa for v in (speed.FASTER, speed.SLOWER, speed.NO_CLEAR))
    assert main(["speed", "--strategy", "uncertainty", "--set", "clsreg.dataset=synthetic",
                 *tiny]) == 0
    df = speed.load_speed(runs)
    # labelled as aggregate labels the runs of this setting, so tables can be joined
    synthetic = setting_label("clsreg", canonical_task_options("clsreg", {"dataset": "synthetic"}),
                              "shared")
    assert synthetic.startswith("clsreg [dataset=synthetic")
    assert sorted(zip(df["setting"], df["strategy"])) == [
        ("clsreg", "dwa"), ("clsreg", "fixed"), (synthetic, "fixed"), (synthetic, "uncertainty")]
    assert (df["ratio_low"] > 0).all() and (df["samples_per_s_low"] > 0).all()
    assert set(df["n_rounds"]) == {2}


def test_gradient_strategies_are_skipped_on_separate_networks(tmp_path, capsys):
    code = main(["speed", "--strategy", "fixed,pcgrad", "--architecture", "separate",
                 "--rounds", "2", "--steps", "1", "--runs-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "pcgrad skipped: needs gradients of shared parameters" in err
    assert list(speed.load_speed(tmp_path)["strategy"]) == ["fixed"]


@pytest.mark.parametrize("args, message", [
    (["--strategy", "nope"], "nope"),
    (["--rounds", "0"], "--rounds must be at least 2"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--architecture", "tower"], "unknown architecture 'tower'"),
    (["--set", "nope.x=1"], "--set names 'nope'"),
])
def test_bad_input_is_one_error_line_and_exit_2(args, message, tmp_path, capsys):
    code = main(["speed", *args, "--runs-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and message in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "speed.json").exists()


def test_a_corrupt_speed_json_stops_before_timing(tmp_path, capsys):
    (tmp_path / "speed.json").write_text("[")
    code = main(["speed", "--strategy", "fixed", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is corrupt" in err
