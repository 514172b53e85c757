"""Every code block of the API B document (``project`` → ``hessext``) runs, on a tiny model.

The blocks are the document's first half verbatim (import prefix changed). Names the document leaves to the
reader (``batch1…batch5``, ``num_epochs``, ``dataloader``, ``train_batch``, ``val_batch``, …) are supplied
here; ``TransformerFactory.create_decoder_only_transformer`` is given small default sizes (vocabulary kept at
1000 so that the document's ``torch.randint(0, 1000, …)`` batches are valid) so that each block runs in
about a second on a CPU. Every block runs in the test's temporary directory (plots go there).
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import hessext.hessian
from hessext import models
from hessext.analyzer import HessianAnalyzer, HessianConfig

DOC_BLOCKS = [
    ("quick_analysis_with_default_settings", r"""
from hessext.hessian import HessianAnalyzer, HessianConfig
from hessext.transformer import TransformerFactory
import torch

# Create model and sample data
model = TransformerFactory.create_decoder_only_transformer(vocab_size=1000)
loss_fn = torch.nn.CrossEntropyLoss()

# Sample batch (you would use your actual data)
batch = {
    "input_ids": torch.randint(0, 1000, (4, 20)),
    "labels": torch.randint(0, 1000, (4, 20))
}

# Create analyzer with default configuration
analyzer = HessianAnalyzer()

# Perform analysis for a training step
results = analyzer.analyze_step(
    model=model,
    loss_fn=loss_fn,
    train_batch=batch,
    model_type="decoder_only",
    step=100
)

print(f"Max eigenvalue: {results['hessian']['max_eigenvalue']}")
print(f"Trace estimate: {results['hessian']['hessian_trace_estimate']}")
print(f"Negative eigenvalues: {results['hessian']['negative_count']}")

# Get human-readable summary
summary = analyzer.get_analysis_summary(results)
print(summary)
"""),
    ("configuration_based_analysis", r"""
from hessext.hessian import HessianConfig, HessianAnalyzer

# Create custom configuration
config = HessianConfig(
    n_components=20,  # More eigenvalues for detailed analysis
    track_component_hessian=True,
    track_gradient_alignment=True,
    track_train_val_landscape_divergence=True,
    track_sharpness=True,
    component_list=["attention", "ffn", "embeddings"]
)

# Create analyzer with custom config
analyzer = HessianAnalyzer.from_config(config)

# Perform comprehensive analysis
results = analyzer.analyze_step(
    model, loss_fn, train_batch, val_batch, "decoder_only", step=500
)

# Access different analysis results
hessian_metrics = results["hessian"]
component_results = results["components"]
alignment_metrics = results["alignment"]
memorization_signals = results["train_val_divergence"]
sharpness_metrics = results["sharpness"]
"""),
    ("predefined_configurations", r"""
# Minimal analysis (fast)
minimal_config = HessianConfig.minimal(n_components=5)

# Default analysis (balanced)
default_config = HessianConfig.default()

# Comprehensive analysis (detailed)
comprehensive_config = HessianConfig.comprehensive(
    n_components=50,
    component_list=[
        "attention", "attention_query", "attention_key", "attention_value",
        "ffn", "embeddings", "norm", "hidden_states"
    ]
)
"""),
    ("custom_configuration", r"""
custom_config = HessianConfig(
    n_components=15,
    num_batches=200,
    device="cuda",
    track_component_hessian=True,
    component_list=["attention", "ffn"],
    track_gradient_alignment=True,
    track_sharpness=True,
    track_train_val_landscape_divergence=True,
    tolerance=0.0001,
    save_hessian_data=True,
    create_plots=True
)
"""),
    ("analyze_specific_components", r"""
from hessext.hessian import ComponentAnalyzer, ComponentSelector

# Initialize component analyzer
component_analyzer = ComponentAnalyzer()

# Get available components for your model
standard_components = ComponentSelector.get_standard_components(no_fnn=False)
print(f"Standard components: {standard_components}")

# Validate components exist in model
valid_components = ComponentSelector.validate_components(model, standard_components)

# Analyze all valid components
component_results = component_analyzer.analyze_all_components(
    model=model,
    loss_fn=loss_fn,
    data_batch=batch,
    model_type="decoder_only",
    component_list=valid_components,
    n_components=10
)

# Compare components
comparison = component_analyzer.compare_components(
    component_results, 
    metric_name="max_eigenvalue"
)
print(f"Component with highest max eigenvalue: {comparison['max_component']}")

# Get summary
summary = component_analyzer.get_component_summary(component_results)
print(f"Total parameters analyzed: {summary['total_parameters']}")
"""),
    ("component_selection", r"""
# Different component selection strategies
minimal_components = ComponentSelector.get_minimal_components()
comprehensive_components = ComponentSelector.get_comprehensive_components()

# Custom component selection
custom_components = ["attention_query", "attention_key", "ffn"]
valid_custom = ComponentSelector.validate_components(model, custom_components)
"""),
    ("multi_batch_analysis", r"""
# Analyze across multiple batches for robust estimates
batches = [batch1, batch2, batch3, batch4, batch5]

batch_analysis = analyzer.compute_batch_analysis(
    model=model,
    loss_fn=loss_fn,
    data_batches=batches,
    model_type="decoder_only"
)

print(f"Mean max eigenvalue: {batch_analysis['max_eigenvalue_mean']:.2e}")
print(f"Std max eigenvalue: {batch_analysis['max_eigenvalue_std']:.2e}")
"""),
    ("gradient_hessian_alignment", r"""
# Analyze how gradients align with curvature
analyzer = HessianAnalyzer(HessianConfig(track_gradient_alignment=True))

results = analyzer.analyze_step(model, loss_fn, batch, step=1000)
alignment = results["alignment"]

print(f"Gradient-Hessian alignment: {alignment['grad_Hg_alignment']}")
print(f"Weighted alignment: {alignment['weighted_alignment']}")
print(f"Curvature-to-gradient ratio: {alignment['grad_Hg_ratio']}")
"""),
    ("sharpness_analysis", r"""
# Analyze loss landscape sharpness
config = HessianConfig(track_sharpness=True)
analyzer = HessianAnalyzer(config)

results = analyzer.analyze_step(model, loss_fn, batch, step=1500)
sharpness = results["sharpness"]

print(f"Max sharpness: {sharpness['max_sharpness']}")
print(f"Mean sharpness: {sharpness['mean_sharpness']}")
print(f"Spectral norm: {sharpness['spectral_norm']}")
"""),
    ("memorization_detection", r"""
# Compare training vs validation Hessian properties
config = HessianConfig(track_train_val_landscape_divergence=True)
analyzer = HessianAnalyzer(config)

results = analyzer.analyze_step(
    model=model,
    loss_fn=loss_fn,
    train_batch=train_batch,
    val_batch=val_batch,
    step=2000
)

memorization = results["train_val_divergence"]
print(f"Memorization score: {memorization['train_val_landscape_divergence_score']}")
print(f"Trace ratio (train/val): {memorization['trace_ratio']}")
print(f"Distribution overlap: {memorization['eigenvalue_distribution_overlap']}")
"""),
    ("training_loop_integration", r"""
# Example integration into training loop
analyzer = HessianAnalyzer(HessianConfig.default())
hessian_history = {}

for epoch in range(num_epochs):
    for step, (train_batch, val_batch) in enumerate(dataloader):
        # ... normal training code ...
        
        # Perform Hessian analysis every N steps
        if step % analysis_interval == 0:
            results = analyzer.analyze_step(
                model, loss_fn, train_batch, val_batch, 
                model_type="decoder_only", step=step
            )
            hessian_history[step] = results
            
            # Print summary
            summary = analyzer.get_analysis_summary(results)
            print(summary)
"""),
    ("create_full_analysis_report", r"""
from hessext.hessian import HessianVisualizer

# After collecting history during training
visualizer = HessianVisualizer()

# Create comprehensive report with all plots
visualizer.create_comprehensive_report(
    hessian_history={step: results["hessian"] for step, results in hessian_history.items()},
    # component_history={step: results["components"] for step, results in hessian_history.items()}, #todo there is an error 
    alignment_history={step: results["alignment"] for step, results in hessian_history.items()},
    memorization_history={step: results["train_val_divergence"] for step, results in hessian_history.items()},
    save_path="./hessian_plots",
    model_name="my_transformer"
)
"""),
    ("individual_plot_types", r"""
# Plot eigenvalue evolution
HessianVisualizer.plot_eigenvalue_evolution(
    hessian_history, 
    save_path="./plots", 
    model_name="model_v1"
)

# Plot complexity metrics (new!)
HessianVisualizer.plot_complexity_metrics(
    hessian_history,
    save_path="./plots",
    model_name="model_v1"
)

# Plot component comparison
HessianVisualizer.plot_component_comparison(
    component_history,
    save_path="./plots",
    model_name="model_v1"
)

# Plot gradient alignment
HessianVisualizer.plot_gradient_alignment(
    alignment_history,
    save_path="./plots", 
    model_name="model_v1"
)

# Plot memorization metrics
HessianVisualizer.plot_memorization_metrics(
    memorization_history,
    save_path="./plots",
    model_name="model_v1"
)

# Save text summary (new!)
HessianVisualizer.save_analysis_summary(
    results, "./plots", "model_v1"
)
"""),
    ("backward_compatibility_functions", r"""
# The module provides legacy functions for existing code
from hessext.hessian import (
    compute_component_hessians,
    compute_hessian_gradient_alignment,
    measure_train_val_landscape_divergence,
    compute_detailed_hessian_metrics
)

# These work exactly like the original functions
component_results = compute_component_hessians(
    model, loss_fn, batch, "decoder_only", 
    components=["attention", "ffn"], n_components=10
)

alignment_results = compute_hessian_gradient_alignment(
    model, loss_fn, batch, "decoder_only", n_components=10
)
"""),
    ("dynamic_configuration_updates", r"""
# Update analyzer configuration at runtime
analyzer = HessianAnalyzer()

# Update specific parameters
analyzer.update_config(
    n_components=25,
    track_sharpness=True,
    component_list=["attention", "ffn", "embeddings", "norm"]
)

# Perform analysis with updated config
results = analyzer.analyze_step(model, loss_fn, batch)
"""),
    ("direct_eigenvalue_computation", r"""
from hessext.hessian import get_hessian_eigenvectors, HessianMetrics

# Compute eigenvalues directly
eigenvalues, eigenvectors = get_hessian_eigenvectors(
    model=model,
    loss_fn=loss_fn,
    train_data_loader=batch,
    num_batches=100,
    device="cuda",
    n_top_vectors=10
)

# Compute detailed metrics
metrics = HessianMetrics.compute_detailed_hessian_metrics(eigenvalues)
print(f"Condition number: {metrics['condition_number']}")
print(f"Effective rank: {metrics['effective_rank_95']}")
print(f"Complexity score: {metrics['complexity_score']}")
"""),
    ("component_parameter_extraction", r"""
from hessext.hessian import extract_component_parameters

# Extract parameters for specific components
attention_params = extract_component_parameters(model, "attention")
ffn_params = extract_component_parameters(model, "ffn")

print(f"Attention parameters: {sum(p.numel() for p in attention_params)}")
print(f"FFN parameters: {sum(p.numel() for p in ffn_params)}")
"""),
    ("error_handling_and_debugging", r"""
try:
    analyzer = HessianAnalyzer(config)
    results = analyzer.analyze_step(model, loss_fn, batch, step=100)
    
    # Check for errors in results
    if "error" in results:
        print(f"Analysis failed: {results['error']}")
    else:
        print("Analysis completed successfully")
        
        # Get detailed summary
        summary = analyzer.get_analysis_summary(results)
        print(summary)
        
except ValueError as e:
    print(f"Configuration error: {e}")
except Exception as e:
    print(f"Unexpected error: {e}")

# Validate configuration
try:
    config = HessianConfig(n_components=-1)  # Will raise ValueError
except ValueError as e:
    print(f"Invalid configuration: {e}")
"""),
    ("performance_tips", r"""
# For large models, use fewer components for faster analysis
fast_config = HessianConfig(
    n_components=5,  # Fewer eigenvalues
    num_batches=50,  # Fewer batches
    track_component_hessian=False,  # Skip component analysis
    track_train_val_landscape_divergence=False  # Skip train/val comparison
)

# For detailed analysis, use more components but less frequently
detailed_config = HessianConfig(
    n_components=20,
    track_component_hessian=True,
    component_list=["attention", "ffn"]  # Limit to key components
)

# Analyze every 1000 steps instead of every 100
if step % 1000 == 0:
    results = analyzer.analyze_step(...)

# Use batch analysis for more robust estimates
if step % 5000 == 0:  # Less frequent but more comprehensive
    batches = collect_recent_batches(5)  # Your function to get batches
    batch_results = analyzer.compute_batch_analysis(model, loss_fn, batches)
"""),
    ("research_applications", r"""
# Study optimization landscape evolution
analyzer = HessianAnalyzer(HessianConfig.comprehensive())

# Collect data throughout training
landscape_evolution = {}
for epoch in range(num_epochs):
    results = analyzer.analyze_step(model, loss_fn, batch, val_batch, step=epoch)
    landscape_evolution[epoch] = results
    
    # Print key insights
    if "train_val_divergence" in results:
        memo_score = results["train_val_divergence"]["train_val_landscape_divergence_score"]
        print(f"Epoch {epoch}: Memorization score = {memo_score:.4f}")

# Create research plots
HessianVisualizer.create_comprehensive_report(
    **landscape_evolution,
    save_path="./research_plots",
    model_name="research_model"
)
"""),
]

BLOCKS = dict(DOC_BLOCKS)


def small_decoder(vocab_size=1000, d_model=8, num_heads=2, num_layers=1, d_ff=16, max_seq_length=32,
                  dropout=0.0, pad_idx=None, no_fnn=False):
    return models.DecoderOnlyTransformer(vocab_size, d_model, num_heads, num_layers, d_ff, max_seq_length,
                                         dropout, pad_idx, no_fnn)


def make_batch(seed, n=4, L=20):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 1000, (n, L), generator=g),
            "labels": torch.randint(0, 1000, (n, L), generator=g)}


FAST = dict(n_components=4, trace_probes=6, tolerance=1e-3)


@pytest.fixture(scope="module")
def history():
    torch.manual_seed(0)
    model = small_decoder()
    an = HessianAnalyzer(HessianConfig(**FAST))
    hist = {s: an.analyze_step(model, torch.nn.CrossEntropyLoss(), make_batch(s), make_batch(s + 10), step=s)
            for s in (0, 100)}
    return hist


@pytest.fixture
def ns(monkeypatch, tmp_path, history):
    monkeypatch.setattr(models.TransformerFactory, "create_decoder_only_transformer", staticmethod(small_decoder))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = small_decoder()
    b = [make_batch(s) for s in range(1, 6)]
    return {
        "torch": torch, "model": model, "loss_fn": torch.nn.CrossEntropyLoss(),
        "batch": b[0], "train_batch": b[0], "val_batch": b[1],
        "batch1": b[0], "batch2": b[1], "batch3": b[2], "batch4": b[3], "batch5": b[4],
        "num_epochs": 1, "dataloader": [(b[0], b[1]), (b[2], b[3])], "analysis_interval": 1, "step": 1,
        "config": HessianConfig(**FAST), "analyzer": HessianAnalyzer(HessianConfig(**FAST)),
        "hessian_history": history, "results": history[100],
        "component_history": {s: r["components"] for s, r in history.items()},
        "alignment_history": {s: r["alignment"] for s, r in history.items()},
        "memorization_history": {s: r["train_val_divergence"] for s, r in history.items()},
        "collect_recent_batches": lambda k: b[:k],
        # Names imported by earlier blocks of the document.
        **{k: getattr(hessext.hessian, k) for k in hessext.hessian.__all__ if k != "HessianVisualizer"},
        "HessianVisualizer": _visualizer(),
    }


def _visualizer():
    try:
        return hessext.hessian.HessianVisualizer
    except ImportError:  # matplotlib missing: the plotting blocks are skipped
        return None


def run(name, ns):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. device="cuda" on a CPU-only machine
        exec(compile(BLOCKS[name], f"<doc:{name}>", "exec"), ns)
    return ns


def no_error(results):
    assert "error" not in results, results.get("error")


def test_every_block_is_covered():
    tested = {k[len("test_"):] for k in globals() if k.startswith("test_")}
    assert set(BLOCKS) <= tested, set(BLOCKS) - tested


def test_quick_analysis_with_default_settings(ns, capsys):
    run("quick_analysis_with_default_settings", ns)
    r = ns["results"]
    no_error(r)
    assert r["hessian"]["max_eigenvalue"] >= r["hessian"]["min_eigenvalue"]
    out = capsys.readouterr().out
    assert "Max eigenvalue:" in out and "Hessian analysis — step 100" in out


def test_configuration_based_analysis(ns):
    run("configuration_based_analysis", ns)
    r = ns["results"]
    no_error(r)
    assert len(r["hessian"]["top_eigenvalues"]) == 20
    assert set(ns["component_results"]) == {"attention", "ffn", "embeddings"}
    assert {"grad_Hg_alignment", "weighted_alignment", "grad_Hg_ratio"} <= set(ns["alignment_metrics"])
    assert "train_val_landscape_divergence_score" in ns["memorization_signals"]
    assert "max_sharpness" in ns["sharpness_metrics"]


def test_predefined_configurations(ns):
    run("predefined_configurations", ns)
    assert ns["minimal_config"].n_components == 5
    assert ns["comprehensive_config"].n_components == 50
    assert "hidden_states" in ns["comprehensive_config"].component_list


def test_custom_configuration(ns):
    run("custom_configuration", ns)
    c = ns["custom_config"]
    assert c.num_batches == 200 and c.tolerance == 1e-4 and c.save_hessian_data and c.create_plots


def test_analyze_specific_components(ns, capsys):
    run("analyze_specific_components", ns)
    assert ns["comparison"]["max_component"] in ns["component_results"]
    assert ns["summary"]["total_parameters"] == sum(
        r["num_parameters"] for r in ns["component_results"].values())
    assert "Total parameters analyzed" in capsys.readouterr().out


def test_component_selection(ns):
    run("component_selection", ns)
    assert ns["valid_custom"] == ["attention_query", "attention_key", "ffn"]


def test_multi_batch_analysis(ns):
    run("multi_batch_analysis", ns)
    ba = ns["batch_analysis"]
    assert ba["num_batches"] == 5 and ba["max_eigenvalue_std"] > 0


def test_gradient_hessian_alignment(ns):
    run("gradient_hessian_alignment", ns)
    a = ns["alignment"]
    assert 0 <= a["grad_Hg_alignment"] <= 1 + 1e-9 and a["grad_Hg_ratio"] > 0


def test_sharpness_analysis(ns):
    run("sharpness_analysis", ns)
    s = ns["sharpness"]
    assert s["spectral_norm"] >= abs(s["max_sharpness"]) and math.isfinite(s["mean_sharpness"])


def test_memorization_detection(ns):
    run("memorization_detection", ns)
    m = ns["memorization"]
    assert all(math.isfinite(m[k]) for k in ("train_val_landscape_divergence_score", "trace_ratio",
                                              "eigenvalue_distribution_overlap"))


def test_training_loop_integration(ns):
    run("training_loop_integration", ns)
    assert sorted(ns["hessian_history"]) == [0, 1]
    for r in ns["hessian_history"].values():
        no_error(r)
        assert "train_val_divergence" in r


def test_create_full_analysis_report(ns, tmp_path):
    pytest.importorskip("matplotlib")
    run("create_full_analysis_report", ns)
    assert any((tmp_path / "hessian_plots").iterdir())


def test_individual_plot_types(ns, tmp_path):
    pytest.importorskip("matplotlib")
    run("individual_plot_types", ns)
    assert any((tmp_path / "plots").iterdir())


def test_backward_compatibility_functions(ns):
    run("backward_compatibility_functions", ns)
    assert set(ns["component_results"]) == {"attention", "ffn"}
    assert "grad_Hg_alignment" in ns["alignment_results"]


def test_dynamic_configuration_updates(ns):
    run("dynamic_configuration_updates", ns)
    no_error(ns["results"])
    assert ns["analyzer"].config.n_components == 25
    assert set(ns["results"]["components"]) == {"attention", "ffn", "embeddings", "norm"}


def test_direct_eigenvalue_computation(ns):
    run("direct_eigenvalue_computation", ns)
    vals, vecs = ns["eigenvalues"], ns["eigenvectors"]
    assert vals.shape == (10,) and vecs.shape[0] == 10 and list(vals) == sorted(vals, reverse=True)
    assert ns["metrics"]["effective_rank_95"] >= 1


def test_component_parameter_extraction(ns):
    run("component_parameter_extraction", ns)
    assert sum(p.numel() for p in ns["attention_params"]) == 4 * 8 * 8
    assert sum(p.numel() for p in ns["ffn_params"]) == 2 * 8 * 16


def test_error_handling_and_debugging(ns, capsys):
    run("error_handling_and_debugging", ns)
    out = capsys.readouterr().out
    assert "Analysis completed successfully" in out
    assert "Invalid configuration: n_components must be a positive int, got -1" in out


def test_performance_tips(ns):
    run("performance_tips", ns)
    assert ns["fast_config"].num_batches == 50 and not ns["fast_config"].track_component_hessian
    assert ns["detailed_config"].component_list == ["attention", "ffn"]


def test_research_applications(ns, capsys):
    # The document's last call splats {epoch: results} as keyword arguments, which Python rejects for
    # int keys ("keywords must be strings"): everything before it runs; the report is then made with
    # the history passed by name.
    with pytest.raises(TypeError, match="keywords must be strings"):
        run("research_applications", ns)
    evo = ns["landscape_evolution"]
    assert sorted(evo) == [0]
    assert "Memorization score" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    ns["HessianVisualizer"].create_comprehensive_report(hessian_history=evo, save_path="./research_plots",
                                                        model_name="research_model")
