"""``python -m hessext demo`` end to end with tiny settings, and its built-in task."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from hessext.demo import MODEL_SIZES, main, make_task  # noqa: E402


def test_task_is_the_running_sum_and_deterministic():
    a = make_task(16, seed=3)
    b = make_task(16, seed=3)
    c = make_task(16, seed=4)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["input_ids"], c["input_ids"])
    x, y = a["input_ids"].numpy(), a["labels"].numpy()
    assert x.dtype == np.int64 and x.shape == y.shape == (16, 8)
    np.testing.assert_array_equal(y, np.cumsum(x, axis=1) % 5)
    assert x.min() >= 0 and x.max() < 5


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    code = main(["--steps", "4", "--model-size", "tiny", "--out", str(out), "--analyze-every", "2",
                 "--top-k", "3", "--dpi", "50", "--no-progress", "--seed", "1"])
    assert code == 0
    assert torch.get_num_threads() == threads  # the thread setting is restored
    assert torch.equal(torch.get_rng_state(), rng)  # and the global RNG
    index = out / "index.html"
    assert capsys.readouterr().out.strip().endswith(str(index.resolve()))
    name = "transformer-tiny"
    page = index.read_text()
    links = re.findall(r"(?:src|href)='([^'#]+)'", page)
    assert links, "index.html links nothing"
    for link in links:
        assert (out / link).is_file(), f"index.html links a missing file: {link}"
    for quantity in ("training_curves", "eigenvalue_evolution", "complexity_metrics", "component_comparison",
                     "component_bars", "gradient_alignment", "memorization_metrics", "sharpness",
                     # the final-parameter extras: Ritz values with error bars, SLQ density, loss landscapes
                     "top_spectrum", "spectral_density", "loss_landscape_1d", "loss_landscape_2d"):
        assert f"{name}_{quantity}.png" in links, quantity
        png = out / f"{name}_{quantity}.png"
        img = __import__("matplotlib.image", fromlist=["imread"]).imread(str(png))
        assert min(img.shape[:2]) > 100 and img[..., :3].std() > 0.02, quantity
    # strict JSON (no NaN / Infinity tokens), every analysed step, no section error
    text = (out / f"{name}_history.json").read_text()
    payload = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert sorted(payload["history"], key=int) == ["0", "2", "4"]
    for res in payload["history"].values():
        assert "error" not in res, res.get("error")
        assert res["hessian"]["max_eigenvalue"] >= res["hessian"]["min_eigenvalue"]
        assert set(res["components"]) >= {"attention", "ffn", "embeddings"}
    assert payload["num_parameters"] == sum(
        p.numel() for p in __import__("hessext.models", fromlist=["TransformerFactory"]).TransformerFactory
        .create_decoder_only_transformer(vocab_size=5, d_model=MODEL_SIZES["tiny"][0],
                                         num_heads=MODEL_SIZES["tiny"][1], num_layers=MODEL_SIZES["tiny"][2],
                                         d_ff=MODEL_SIZES["tiny"][3], max_seq_length=8).parameters())
    # the report is readable wherever its PNGs are (no private 0600 files from the atomic writer)
    for f in ("index.html", f"{name}_analysis_summary.txt", f"{name}_history.json"):
        assert (out / f).stat().st_mode & 0o044 == (out / f"{name}_sharpness.png").stat().st_mode & 0o044, f
    summary = (out / f"{name}_analysis_summary.txt").read_text()
    assert "3 analysed steps" in summary and "train loss" in summary


def test_demo_rejects_bad_arguments(tmp_path):
    for argv in (["--steps", "0"], ["--model-size", "huge"], ["--threads", "-1"], ["--formats", "bmp"]):
        with pytest.raises(SystemExit) if argv[0] != "--formats" else pytest.raises(ValueError):
            main(argv + ["--out", str(tmp_path), "--no-progress"])


def test_python_m_hessext_demo_help():
    root = Path(__file__).parent.parent
    res = subprocess.run([sys.executable, "-m", "hessext", "demo", "--help"], capture_output=True, text=True,
                         cwd=root, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--model-size" in res.stdout and "--out" in res.stdout
