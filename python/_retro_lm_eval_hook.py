"""retro's model type in lm-evaluation-harness's registry, for the stock ``lm_eval`` command too.

lm_eval (0.4.x) looks model types up in ``lm_eval.api.registry.model_registry`` and scans no entry
points for them, so ``lm_eval --model retro`` finds ours only if something registers it first.
:func:`register_model_type` does, lazily: the entry names ``retro.eval.harness:RetroLM``, which
lm_eval imports (with torch) only when a run asks for ``--model retro``. retro.eval.harness calls it
on import; in an installed wheel, ``retro_lm_eval_hook.pth`` (beside this module in site-packages)
calls :func:`install` at every interpreter start-up, which puts a :class:`RegistryWatcher` on
sys.meta_path to call it as soon as lm_eval has imported its registry.

This module lives outside the retro package so that start-up imports neither retro nor numpy:
install() costs one environment lookup and one list insert, and nothing at all happens in a
process that never imports lm_eval. Nothing here raises at start-up; a registration that fails
(an lm_eval older than 0.4.10, a broken install) leaves lm_eval as it was and says so in one line
on stderr. ``RETRO_NO_LM_EVAL_HOOK=1`` turns the hook off.
"""

import os
import sys

# typing (and even __future__) is not imported at start-up: the annotations are strings
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

MODEL_TYPE = "retro"
MODEL_CLASS = "retro.eval.harness:RetroLM"  # lm_eval's lazy "module:attribute" entry
REGISTRY_MODULE = "lm_eval.api.registry"
DISABLE_VARIABLE = "RETRO_NO_LM_EVAL_HOOK"


def register_model_type() -> None:
    """Registers ``retro`` -> retro.eval.harness.RetroLM, not imported yet; a no-op if present."""
    # lm_eval fills its registry with its own model types only when it finds it empty: first
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if MODEL_TYPE not in model_registry:
        model_registry.register(MODEL_TYPE, target=MODEL_CLASS)


class RegistryWatcher:
    """A sys.meta_path finder: the spec of lm_eval.api.registry as the other finders give it, its
    loader wrapped to call register_model_type once the module has run; no spec for any other."""

    def find_spec(self, fullname: str, path: "Sequence[str] | None" = None,
                  target: "ModuleType | None" = None) -> "ModuleSpec | None":
        if fullname != REGISTRY_MODULE:
            return None
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        # a Loader in all but its base class (importlib.abc is not imported here)
                        spec.loader = RegisteringLoader(spec.loader)  # type: ignore[assignment]
                    return spec
        except Exception:  # the import goes on without us, as if the hook were not there
            pass
        return None


class RegisteringLoader:
    """The registry module's own loader, which then registers retro's model type; every other
    attribute (get_source, is_package, ...) is the original's."""

    def __init__(self, loader: "Any") -> None:
        self.loader = loader

    def create_module(self, spec: "ModuleSpec") -> "ModuleType | None":
        return self.loader.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        self.loader.exec_module(module)  # lm_eval's own errors propagate, as without the hook
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        try:
            register_model_type()
        except Exception as error:  # lm_eval keeps working, without the retro model type
            if sys.stderr is not None:
                sys.stderr.write(f"retro: lm_eval's model type {MODEL_TYPE!r} is not registered "
                                 f"({type(error).__name__}: {error}); {DISABLE_VARIABLE}=1 "
                                 "silences this\n")

    def __getattr__(self, name: str) -> "Any":
        return getattr(self.loader, name)


def install() -> None:
    """Puts one RegistryWatcher first on sys.meta_path (none if DISABLE_VARIABLE is set and not
    "0" or "", or if one is there already); never raises."""
    try:
        if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
            return
        # by name: a second copy of this module (another sys.path entry) must not add a second one
        if not any(type(finder).__name__ == RegistryWatcher.__name__ for finder in sys.meta_path):
            sys.meta_path.insert(0, RegistryWatcher())
    except Exception:  # interpreter start-up must never fail because of retro
        pass
