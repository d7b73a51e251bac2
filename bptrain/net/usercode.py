"""Loading a user's own gate class, named as `path/to/file.py:ClassName` or
`package.module:ClassName`: by `bptrain gradcheck --gate` and by a config layer
`{type: gate, class: ...}`, so that "write it, check it, train with it" is one loop.

This is the one place where bptrain imports code: only the file or module the user named.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from bptrain.engine.gate import Gate
from bptrain.errors import ConfigError

_loaded: dict[tuple[str, str], type[Gate]] = {}  # a file is executed once per process


def load_gate_class(spec: str, where: str = "--gate", base_dir: str | Path | None = None
                    ) -> type[Gate]:
    """`package.module:ClassName` or `path/to/file.py:ClassName` -> a Gate subclass.
    A relative file path is taken from `base_dir` (the config's folder) when it exists there,
    else from the current folder."""
    if not isinstance(spec, str):
        raise ConfigError(f"{where}: expected a string like my_gates.py:Swish, got {spec!r}.")
    module_name, _, class_name = spec.rpartition(":")
    if not module_name or not class_name:
        raise ConfigError(f"{where}: {spec!r}: write it as package.module:ClassName or "
                          "path/to/file.py:ClassName.")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).is_file():
                path = Path(base_dir) / path
            if not path.is_file():
                raise ConfigError(f"{where}: {spec!r}: file {path} not found. Give the path to "
                                  "the .py file that defines the gate (relative to the config "
                                  "file or the current folder).")
            key = (str(path.resolve()), class_name)
            if key in _loaded:
                return _loaded[key]
            mod_spec = importlib.util.spec_from_file_location(f"bptrain_user_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module  # so inspect and pickle find its classes
            try:
                mod_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[mod_spec.name]
                raise
        else:
            key = None
            sys.path.insert(0, ".")  # let a learner's module in the current folder be found
            try:
                module = importlib.import_module(module_name)
            finally:
                sys.path.pop(0)
    except ConfigError:
        raise
    except ImportError as e:
        raise ConfigError(f"{where}: {spec!r}: cannot import {module_name} ({e}). Run from the "
                          "folder that holds it, or give the path to the .py file.") from None
    except Exception as e:  # the user's module itself failed: say where
        raise ConfigError(f"{where}: {spec!r}: importing {module_name} raised "
                          f"{type(e).__name__}: {e}. Fix the error in that file.") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Gate)):
        what = "" if cls is None else f" ({class_name} is a {type(cls).__name__})"
        raise ConfigError(f"{where}: {spec!r}: {module_name} has no Gate subclass named "
                          f"{class_name}{what}; define `class {class_name}(bptrain.Gate)` with "
                          "forward and backward.")
    if key is not None:
        _loaded[key] = cls
    return cls
