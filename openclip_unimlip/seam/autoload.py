"""Run at interpreter start by ``openclip_unimlip.pth``: installs post-import hooks, nothing else.

OpenCLIP has no plugin mechanism and ``open_clip_train.main`` binds its factories at import
time, so the patches must be in place the moment each OpenCLIP module finishes importing,
in every process (torchrun workers start as ``python -m``). This module therefore only
registers a meta-path finder: it imports neither torch nor OpenCLIP, costs well under a
millisecond, and can never break an unrelated program (every failure becomes a warning).
Set ``OPENCLIP_UNIMLIP_DISABLE=1`` to opt out.
"""
import os
import sys
import warnings

# module name -> name of the function in openclip_unimlip.seam.patches that patches it
_HOOKS = {
    "open_clip": "patch_open_clip",
    "open_clip_train.params": "patch_params",
    "open_clip_train.train": "patch_train",
}


class _PostImportFinder:
    # duck-typed: subclassing importlib.abc.MetaPathFinder would import pathlib & co at start-up
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module, _original=original_exec, _name=fullname):
            _original(module)
            _run_hook(_name, module)

        spec.loader.exec_module = exec_module
        return spec


def _run_hook(module_name: str, module) -> None:
    try:
        from openclip_unimlip.seam import patches

        getattr(patches, _HOOKS[module_name])(module)
    except Exception as exc:  # never break the importing program
        warnings.warn(f"openclip-unimlip could not patch {module_name}: {exc!r}", RuntimeWarning)


def install() -> None:
    if os.environ.get("OPENCLIP_UNIMLIP_DISABLE", "") not in ("", "0"):
        return
    if any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _PostImportFinder())
    # Modules imported before this ran (rare: only when installed late) get patched now.
    for name in _HOOKS:
        if name in sys.modules:
            _run_hook(name, sys.modules[name])


try:
    install()
except Exception as exc:
    warnings.warn(f"openclip-unimlip autoload failed: {exc!r}", RuntimeWarning)
