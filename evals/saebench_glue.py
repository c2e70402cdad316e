"""What every SAEBench wrapper here shares: routing SAEBench's hub data loaders to our offline sets,
formatting the SAE the way SAEBench expects, and writing its result JSON atomically.

Why patching: SAEBench's eval functions fetch their datasets by name from the hub inside the eval
(sparse probing: `dataset_utils.get_multi_label_train_test_data`; SCR/TPP:
`dataset_creation.get_train_test_data`). We route only our own dataset names (which the hub does not
have) to the offline sets, for the duration of one call; every other name goes to SAEBench's loader
unchanged, so the full-scale path uses SAEBench's stock data.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch


@contextlib.contextmanager
def patched(obj, attr: str, value):
    own = attr in vars(obj)  # else inherited (e.g. a method): removing our value restores it
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        if own:
            setattr(obj, attr, old)
        else:
            delattr(obj, attr)


@contextlib.contextmanager
def grad_mode_restored():
    """SAEBench's SCR/TPP turn autograd off globally and leave it off; put it back afterwards."""
    was = torch.is_grad_enabled()
    try:
        yield
    finally:
        torch.set_grad_enabled(was)


@contextlib.contextmanager
def hooks_cleared(model):
    """Whatever happens inside, no intervention hook stays on the shared model afterwards."""
    try:
        yield
    finally:
        model.reset_hooks()


@contextlib.contextmanager
def features_clamped(model, sae, features, multiplier: float):
    """SAEBench's unlearning intervention for the duration of the block: the given SAE features are
    clamped to -multiplier wherever they fire (`modify_model`, `clamp_feature_activation`). No
    features: the model is left as it is. Every hook is removed afterwards."""
    import numpy as np
    from sae_bench.evals.unlearning.utils.metrics import modify_model

    try:
        if len(features):
            modify_model(model, sae, intervention_method="clamp_feature_activation",
                         features_to_ablate=np.ascontiguousarray(features), multiplier=multiplier)
        yield
    finally:
        model.reset_hooks()


def formatted_sae(sae, device: str, name: str = "harness"):
    """SAEBench reads cfg.hook_name / cfg.hook_layer, which SAELens 6 keeps under cfg.metadata."""
    from sae_bench.sae_bench_utils import general_utils

    sae_id, formatted, _ = general_utils.load_and_format_sae(name, sae, device)
    return sae_id, formatted


def output_common(config, sae_id: str, sae) -> dict:
    """The fields every SAEBench eval output shares."""
    from sae_bench.sae_bench_utils import get_sae_bench_version, get_sae_lens_version

    return dict(
        eval_config=config,
        eval_id=f"harness-{int(time.time())}",
        datetime_epoch_millis=int(time.time() * 1000),
        sae_bench_commit_hash=get_sae_bench_version(),
        sae_lens_id=sae_id,
        sae_lens_release_id="harness",
        sae_lens_version=get_sae_lens_version(),
        sae_cfg_dict=sae.cfg.to_dict(),
    )


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def save_output(output, path: Path) -> dict:
    """Write a SAEBench pydantic output with its own writer (atomically); return it as a dict."""
    tmp = path.with_name(path.name + ".tmp")
    output.to_json_file(str(tmp))
    data = json.loads(tmp.read_text())
    os.replace(tmp, path)
    return data
