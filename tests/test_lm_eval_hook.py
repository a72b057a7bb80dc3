"""_retro_lm_eval_hook and retro_lm_eval_hook.pth: what the wheel's .pth does at start-up (nothing
but one finder on sys.meta_path), what it does when lm_eval loads its registry (``retro``, lazy,
beside lm_eval's own types), and how it stays out of the way (off by RETRO_NO_LM_EVAL_HOOK,
installed once, a failed registration neither raising nor breaking lm_eval). Each case runs in a
fresh interpreter whose site directory is python/, as site-packages is for an installed wheel;
lm_eval's command line itself runs in tests/test_harness.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PTH = Path(__file__).parents[1] / "python" / "retro_lm_eval_hook.pth"

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm_eval is not installed")

# Processes python/ as a site directory (its .pth line runs as at start-up), then the case.
PROLOGUE = f"""
import json, site, sys
site_dir = {str(PTH.parent)!r}
before = set(sys.modules)
site.addsitedir(site_dir)
started = sorted(set(sys.modules) - before)
watchers = [type(f).__name__ for f in sys.meta_path].count("RegistryWatcher")
"""


def run_case(code: str, disabled: str = "", site_packages: bool = True) -> tuple[dict, str]:
    """(the JSON the case prints last, its stderr) of PROLOGUE + code in a fresh interpreter;
    without site_packages (python -S), python/'s .pth is the only one processed (an installed
    wheel's own .pth has run already otherwise)."""
    env = {**os.environ, "RETRO_NO_LM_EVAL_HOOK": disabled, "OMP_NUM_THREADS": "1"}
    flags = [] if site_packages else ["-S"]
    process = subprocess.run([sys.executable, *flags, "-c", PROLOGUE + code], env=env,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-4000:]
    return json.loads(process.stdout.splitlines()[-1]), process.stderr


def test_the_pth_line_is_one_import():
    assert PTH.read_text().splitlines() == [
        "import _retro_lm_eval_hook; _retro_lm_eval_hook.install()"]


def test_start_up_imports_only_the_hook_and_adds_one_finder():
    out, stderr = run_case("""
print(json.dumps({"started": started, "watchers": watchers,
                  "first": type(sys.meta_path[0]).__name__}))
""", site_packages=False)
    assert out == {"started": ["_retro_lm_eval_hook"], "watchers": 1, "first": "RegistryWatcher"}
    assert stderr == ""


@needs_lm_eval
def test_lm_eval_registry_gets_retro_lazily_beside_its_own_types():
    out, stderr = run_case("""
from lm_eval.api.registry import get_model, model_registry
entry = model_registry._objs["retro"]  # before any lookup: the placeholder
lazy = {"entry": entry, "torch": "torch" in sys.modules, "retro": "retro" in sys.modules}
print(json.dumps({**lazy, "dummy": get_model("dummy").__name__,
                  "retro_type": get_model("retro").__module__ + ":" + get_model("retro").__name__}))
""")
    assert out == {"entry": "retro.eval.harness:RetroLM", "torch": False, "retro": False,
                   "dummy": "DummyLM", "retro_type": "retro.eval.harness:RetroLM"}
    assert stderr == ""


@needs_lm_eval
@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_variable_turns_the_hook_off(value):
    out, _ = run_case("""
from lm_eval.api.registry import model_registry
print(json.dumps({"watchers": watchers, "retro": "retro" in model_registry}))
""", disabled=value)
    assert out == {"watchers": 0, "retro": False}


def test_install_is_idempotent():
    out, _ = run_case("""
import _retro_lm_eval_hook
_retro_lm_eval_hook.install()
site.addsitedir(site_dir)
print(json.dumps({"watchers": [type(f).__name__ for f in sys.meta_path].count("RegistryWatcher")}))
""")
    assert out == {"watchers": 1}


@needs_lm_eval
def test_a_failed_registration_says_so_and_leaves_lm_eval_working():
    out, stderr = run_case("""
import _retro_lm_eval_hook
def fail():
    raise ImportError("no retro here")
_retro_lm_eval_hook.register_model_type = fail
from lm_eval.api.registry import get_model, model_registry
print(json.dumps({"retro": "retro" in model_registry, "dummy": get_model("dummy").__name__}))
""")
    assert out == {"retro": False, "dummy": "DummyLM"}
    assert stderr == ("retro: lm_eval's model type 'retro' is not registered (ImportError: no retro "
                      "here); RETRO_NO_LM_EVAL_HOOK=1 silences this\n")


@needs_lm_eval
def test_the_registry_module_keeps_its_own_loader():
    out, _ = run_case("""
import lm_eval.api.registry as registry
import inspect
print(json.dumps({"loader": type(registry.__loader__).__name__,
                  "spec_loader": type(registry.__spec__.loader).__name__,
                  "source": "def get_model" in inspect.getsource(registry)}))
""")
    assert out == {"loader": "SourceFileLoader", "spec_loader": "SourceFileLoader", "source": True}
