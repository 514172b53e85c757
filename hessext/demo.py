"""``python -m hessext demo``: train a small transformer and write a Hessian report, in about a minute.

The task ships with the package (no download): **running sum modulo p**. A sequence ``x_1 … x_L`` of
digits in ``[0, p)`` is the input and the label at position ``t`` is ``(x_1 + … + x_t) mod p``. The
causal decoder must aggregate its whole prefix at every position. The training set is deliberately small
(256 sequences): a model large enough memorises it while validation loss stalls, so the report shows both
the curvature growing during fitting and the train/validation landscape diverging.

Every ``--analyze-every`` steps (and at the first and last step) ``HessianAnalyzer.analyze_step`` runs on a
fixed training batch and a fixed validation batch. At the end the demo adds the top-k spectrum with Ritz
error bars, the spectral density (SLQ) and the loss along the top eigenvectors (1-D and 2-D), then writes

    OUT/index.html                     every figure and the summary table (open this)
    OUT/<model>_*.png                  the figures
    OUT/<model>_analysis_summary.txt   text summary
    OUT/<model>_history.json           all per-step results (non-finite numbers as null)

Options: ``--out DIR`` (default ``./hessext-demo``), ``--steps``, ``--model-size {tiny,small}``, ``--seed``,
``--analyze-every``, ``--formats``, ``--no-progress``. ``main(argv)`` returns the exit status.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._checks import json_safe
from ._io import atomic_write
from ._state import restore_rng_state, rng_state
from .analysis import HessianAnalyzer, HessianConfig
from .density import spectral_density
from .hvp import HessianOperator
from .lanczos import lanczos
from .landscape import loss_landscape_1d, loss_landscape_2d, suggest_radius
from .models import TransformerFactory
from .viz import HessianVisualizer, check_formats

__all__ = ["main", "make_task", "MODEL_SIZES"]

#: (d_model, num_heads, num_layers, d_ff) per ``--model-size``.
MODEL_SIZES = {
    "tiny": (32, 2, 1, 64),
    "small": (48, 4, 2, 96),
}
MODULUS = 5
SEQ_LEN = 8
TRAIN_SIZE = 256
VAL_SIZE = 512
BATCH = 64
HESSIAN_BATCH = 64


def make_task(n: int, seed: int, modulus: int = MODULUS, seq_len: int = SEQ_LEN) -> dict[str, torch.Tensor]:
    """``n`` sequences of the running-sum task: ``{"input_ids": [n, L], "labels": [n, L]}`` (int64).

    ``labels[:, t] = (input_ids[:, 0] + … + input_ids[:, t]) mod modulus``; deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(0, modulus, size=(n, seq_len))
    y = np.cumsum(x, axis=1) % modulus
    return {"input_ids": torch.from_numpy(x).long(), "labels": torch.from_numpy(y).long()}


def _subset(data: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in data.items()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hessext demo",
        description="Train a small transformer on a built-in running-sum task, analyse its Hessian during "
                    "training, and write an HTML report (plots, summary, JSON).")
    p.add_argument("--out", default="./hessext-demo", help="report directory (default: ./hessext-demo)")
    p.add_argument("--steps", type=int, default=240, help="training steps (default: 240)")
    p.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="small",
                   help="model size (default: small)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and probes (default: 0)")
    p.add_argument("--analyze-every", type=int, default=None,
                   help="steps between Hessian analyses (default: steps/6)")
    p.add_argument("--top-k", type=int, default=8, help="top eigenvalues per analysis (default: 8)")
    p.add_argument("--formats", default="png", help="figure formats, comma separated (e.g. png,svg)")
    p.add_argument("--dpi", type=int, default=130, help="resolution of raster figures (default: 130)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads during the demo (default: 1, fastest for models this small; "
                        "0: leave torch's setting); restored on exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-extras", action="store_true",
                   help="skip the final spectrum, spectral density and loss-landscape figures")
    return p


def _evaluate(model: nn.Module, data: dict[str, torch.Tensor], loss_fn: nn.Module) -> tuple[float, float]:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(data["input_ids"])
            V = logits.shape[-1]
            loss = float(loss_fn(logits.reshape(-1, V), data["labels"].reshape(-1)))
            acc = float((logits.argmax(-1) == data["labels"]).float().mean())
    finally:
        model.train(was)
    return loss, acc


def _log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; ``argv`` are the arguments after ``demo`` (default: ``sys.argv[1:]``)."""
    args = _parser().parse_args(None if argv is None else list(argv))
    if args.threads < 0:
        raise SystemExit(f"--threads must be >= 0, got {args.threads}")
    threads, rng = torch.get_num_threads(), rng_state()
    if args.threads:
        # Tiny matrices: thread fan-out costs more than it saves, and oversubscribed cores make it far worse.
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:  # leave the caller's process as it was (main() may be called in-process)
        torch.set_num_threads(threads)
        restore_rng_state(rng)


def _checked(args: argparse.Namespace) -> tuple[int, tuple[str, ...]]:
    """Refuse bad arguments; returns the analysis interval and the figure formats."""
    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    if args.dpi < 10:
        raise SystemExit(f"--dpi must be >= 10, got {args.dpi}")
    if args.top_k < 1:
        raise SystemExit(f"--top-k must be >= 1, got {args.top_k}")
    every = args.analyze_every if args.analyze_every is not None else max(1, args.steps // 6)
    if every < 1:
        raise SystemExit(f"--analyze-every must be >= 1, got {every}")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    check_formats(formats)
    return every, formats


@dataclass
class _Setup:
    """The data, model and analyzer of one demo run."""
    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]
    h_train: dict[str, torch.Tensor]   # the fixed batches the Hessian is analysed on
    h_val: dict[str, torch.Tensor]
    model: nn.Module
    model_name: str
    n_params: int
    analyzer: HessianAnalyzer


def _setup(args: argparse.Namespace) -> _Setup:
    """Data sets, model and analyzer, all seeded by ``--seed`` (in this order: the RNG draws depend on it)."""
    torch.manual_seed(args.seed)
    train = make_task(TRAIN_SIZE, seed=args.seed)
    val = make_task(VAL_SIZE, seed=args.seed + 10_000)
    gen = torch.Generator().manual_seed(args.seed)
    h_train = _subset(train, torch.randperm(TRAIN_SIZE, generator=gen)[:HESSIAN_BATCH])
    h_val = _subset(val, torch.arange(HESSIAN_BATCH))
    d_model, heads, layers, d_ff = MODEL_SIZES[args.model_size]
    model = TransformerFactory.create_decoder_only_transformer(
        vocab_size=MODULUS, d_model=d_model, num_heads=heads, num_layers=layers, d_ff=d_ff,
        max_seq_length=SEQ_LEN, dropout=0.0)
    model_name = f"transformer-{args.model_size}"
    config = HessianConfig(
        n_components=args.top_k, n_bottom=1, trace_probes=10, tolerance=1e-3, seed=args.seed,
        component_list=["embeddings", "attention", "ffn", "norm", "output_projection"],
        track_component_hessian=True, track_gradient_alignment=True, track_sharpness=True,
        track_train_val_landscape_divergence=True, model_name=model_name)
    return _Setup(train, val, h_train, h_val, model, model_name, sum(p.numel() for p in model.parameters()),
                  HessianAnalyzer(config))


def _analyse(su: _Setup, loss_fn: nn.Module, step: int, bar: Any) -> tuple[dict, dict]:
    """Loss and accuracy on both data sets, and ``analyze_step`` at ``step``: ``(training, results)``."""
    tr_loss, tr_acc = _evaluate(su.model, su.train, loss_fn)
    va_loss, va_acc = _evaluate(su.model, su.val, loss_fn)
    training = {"train_loss": tr_loss, "val_loss": va_loss, "train_accuracy": tr_acc, "val_accuracy": va_acc}
    bar.set_postfix_str(f"analysing Hessian at step {step}")
    res = su.analyzer.analyze_step(su.model, loss_fn, su.h_train, su.h_val, model_type="decoder_only",
                                   step=step)
    if "error" in res:
        bar.write(f"step {step}: analysis error: {res['error']}")
    hs = res.get("hessian", {})
    bar.set_postfix(loss=f"{tr_loss:.3f}", val=f"{va_loss:.3f}",
                    lam_max=f"{hs.get('max_eigenvalue', float('nan')):.3g}")
    return training, res


def _train(su: _Setup, loss_fn: nn.Module, args: argparse.Namespace, every: int,
           show: bool) -> tuple[dict[int, dict], dict[int, dict], float]:
    """AdamW on random batches, analysing at step 0, every ``every`` steps and at the end: ``(history,
    training metrics, seconds spent in the analyses)``."""
    opt = torch.optim.AdamW(su.model.parameters(), lr=3e-3, weight_decay=0.0)
    analyse_at = sorted({0, args.steps, *range(every, args.steps, every)})
    history: dict[int, dict] = {}
    training: dict[int, dict] = {}
    bar = tqdm(total=args.steps, desc="training", unit="step", disable=not show, dynamic_ncols=True)
    su.model.train()
    analysis_time = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. a component absent from this model
        for step in range(args.steps + 1):
            if step in analyse_at:
                t0 = time.perf_counter()
                training[step], history[step] = _analyse(su, loss_fn, step, bar)
                analysis_time += time.perf_counter() - t0
            if step == args.steps:
                break
            batch = _subset(su.train, torch.randint(0, TRAIN_SIZE, (BATCH,)))
            logits = su.model(batch["input_ids"])
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
    bar.close()
    return history, training, analysis_time


def _run(args: argparse.Namespace) -> int:
    every, formats = _checked(args)
    t_start = time.perf_counter()
    show = not args.no_progress
    su = _setup(args)
    loss_fn = nn.CrossEntropyLoss()
    _log(f"hessext demo: {su.model_name} ({su.n_params:,} parameters) on running sum mod {MODULUS} "
         f"(length {SEQ_LEN}, {TRAIN_SIZE} training sequences); {args.steps} steps, Hessian analysis every "
         f"{every} steps -> {args.out}", not show)
    history, training, analysis_time = _train(su, loss_fn, args, every, show)
    extras = {} if args.no_extras else _final_extras(su.model, loss_fn, su.h_train, args, show)

    os.makedirs(args.out, exist_ok=True)
    payload = {"model_name": su.model_name, "num_parameters": su.n_params,
               "task": f"running sum mod {MODULUS}", "args": vars(args), "training": training,
               "history": history}
    json_path = os.path.join(args.out, f"{su.model_name}_history.json")
    atomic_write(json_path, json.dumps(json_safe(payload), indent=1, allow_nan=False))
    report = HessianVisualizer.create_comprehensive_report(
        history=history, training_history=training, save_path=args.out, model_name=su.model_name,
        formats=formats, dpi=args.dpi, title=f"hessext demo: {su.model_name} on running sum mod {MODULUS}",
        **extras)
    for name, err in report["failures"].items():
        _log(f"figure {name} failed: {err}")
    hs = history[max(history)].get("hessian", {})
    last = training[max(training)]
    _log(f"done in {time.perf_counter() - t_start:.1f} s (Hessian analyses {analysis_time:.1f} s). Final "
         f"step: train loss {last['train_loss']:.3f}, val loss {last['val_loss']:.3f}, "
         f"λ_max {hs.get('max_eigenvalue', float('nan')):.4g}, "
         f"tr H {hs.get('hessian_trace_estimate', float('nan')):.4g}", not show)
    print(os.path.abspath(report["index"]))
    return 0


def _landscapes(model: nn.Module, loss_fn: nn.Module, batch: dict, H: HessianOperator, eig: Any,
                args: argparse.Namespace, bar: Any) -> dict[str, Any]:
    """The loss along the top eigenvector and on the plane of the top two, over a radius where the
    quadratic model predicts a rise of about 1 in the loss."""
    lam = float(torch.as_tensor(eig.eigenvalues).max())
    base, _ = H.loss_and_grad()
    radius = suggest_radius(lam, base, rise=1.0)
    small = args.steps <= 8
    out = {"landscape_1d": loss_landscape_1d(model, loss_fn, batch, eig, radius=radius,
                                             num_points=9 if small else 31, model_type="decoder_only")}
    bar.update(1)
    out["landscape_2d"] = loss_landscape_2d(model, loss_fn, batch, eig, radius=radius,
                                            num_points=5 if small else 21, model_type="decoder_only")
    bar.update(1)
    return out


def _final_extras(model: nn.Module, loss_fn: nn.Module, batch: dict, args: argparse.Namespace,
                  show: bool) -> dict[str, Any]:
    """Top-k spectrum with residuals, spectral density, and loss landscapes at the final parameters.

    Each part is optional: if its computation fails, the report simply lacks that figure.
    """
    out: dict[str, Any] = {}
    bar = tqdm(total=4, desc="final spectrum", unit="part", disable=not show, dynamic_ncols=True)
    try:
        H = HessianOperator(model, loss_fn, batch, model_type="decoder_only")
    except Exception as e:  # noqa: BLE001
        bar.close()
        _log(f"final spectrum skipped: {type(e).__name__}: {e}")
        return out
    eig = None
    try:
        # true residuals ‖Hv − θv‖ (k more matvecs): the error bars of the top-k figure
        eig = lanczos(H, k=max(2, args.top_k), which="LA", tol=1e-4, seed=args.seed, compute_residuals=True)
        out["eigen"] = eig
    except Exception as e:  # noqa: BLE001
        _log(f"top-k spectrum skipped: {type(e).__name__}: {e}")
    bar.update(1)
    try:
        out["density"] = spectral_density(H, num_probes=2 if args.model_size == "tiny" else 3,
                                          num_iter=40 if args.steps > 8 else 20, seed=args.seed)
    except Exception as e:  # noqa: BLE001
        _log(f"spectral density skipped: {type(e).__name__}: {e}")
    bar.update(1)
    if eig is not None and getattr(eig, "eigenvectors", None) is not None:
        try:
            out.update(_landscapes(model, loss_fn, batch, H, eig, args, bar))
        except Exception as e:  # noqa: BLE001
            _log(f"loss landscape skipped: {type(e).__name__}: {e}")
    bar.close()
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
