"""Exporting a trained run: a merged full model (`stage.py`), as an HF folder or a GGUF file.

`sftpack.export` is also the Python API function (`pipeline/api.py`): importing a submodule binds
this package over that name on `sftpack`, so the package itself is callable and calls the API
(tests/test_package.py: no subpackage shadows an API function).
"""

from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from sftpack.api import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
