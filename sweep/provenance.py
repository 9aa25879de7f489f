"""What identifies a job and a sweep, and what produced them: config hash, sweep key, git commit,
package versions. Logged as MLflow tags so any result can be traced and any sweep resumed."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quant.memo import content_key

REPO_ROOT = Path(__file__).resolve().parents[1]
UNRESOLVED_MODEL = "unresolved"  # the identity of a model path where no model is (then the path keys the job)
PACKAGES = (
    "llama-quant-harness",
    "torch",
    "transformers",
    "lm_eval",
    "mlflow",
    "hydra-core",
    "omegaconf",
    "safetensors",
    "gguf",
)
# Job config keys that do not change the result: where it is written, logged or cached.
VOLATILE_KEYS = ("save_directory", "overwrite", "tracking", "cache", "resume", "data_root", "quiet", "rule")
# The same inside a group: (group, key).


@functools.cache
def git_state() -> dict[str, str]:
    """``git_commit`` (or "unknown") and ``git_dirty`` ("true" when tracked files have local changes)."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(dirty)).lower()}


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.cache
def package_versions() -> dict[str, str]:
    """``version.<package>`` tags for the packages a result depends on, and Python's version."""
    versions = {"version.python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[f"version.{name}"] = "not installed"
    return versions


def config_hash(cfg: DictConfig, model_identity: str) -> str:
    """Content key of a job: its resolved config without :data:`VOLATILE_KEYS`, plus the content
    identity of its model (:func:`sweep.shared_work.path_identity`) in place of its path: the same
    files copied elsewhere give the same hash, a file changed in place another. Two jobs with the same
    hash compute the same result; resume skips on it."""
    resolved: dict[str, Any] = {}
    for key in cfg:
        if key in VOLATILE_KEYS:
            continue  # never resolved: e.g. save_directory needs the Hydra job's runtime
        node = cfg[key]
        resolved[str(key)] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    if model_identity != UNRESOLVED_MODEL and isinstance(resolved.get("model"), dict):
        resolved["model"].pop("path", None)
    return content_key("job", resolved, model_identity)[:16]


def sweep_key(config_name: str | None, task_overrides: Iterable[str], sweeper_params: Mapping[str, Any] | None) -> str:
    """Identity of a sweep: its config, command-line overrides (order-free) and declared axes.

    The ``launcher`` choice is left out: it says where the jobs run, not what they compute, so a
    sweep resumed on another launcher is the same sweep."""
    overrides = sorted(o for o in task_overrides if o.lstrip("+~").split("=")[0] != "launcher")
    return content_key("sweep", config_name, overrides, dict(sweeper_params or {}))[:16]
