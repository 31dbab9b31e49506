"""What both Triton kernel modules need to run under TRITON_INTERPRET=1, next to compiled runs."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys


def interpreting() -> bool:
    """Whether Triton kernels launched now go through the interpreter (read at every call)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def built_interpreted(kernel) -> bool:
    """Whether a @triton.jit function was built for the interpreter."""
    return type(kernel).__name__ == "InterpretedFunction"


def kernel_module(name: str):
    """eptk.kernels.<name> with its kernels built for the mode TRITON_INTERPRET selects now.

    Triton binds a kernel to the interpreter or the compiler when it decorates it, so a process
    that runs interpreter tests next to GPU tests needs both builds. The module as first imported
    serves the mode it was built for; the other mode gets a second copy of it, executed once from
    the same file under the name `<module>__interpreted` or `<module>__compiled`.
    """
    module = importlib.import_module(f"{__package__}.{name}")
    want = interpreting()
    if module.INTERPRETED == want:
        return module
    copy_name = f"{module.__name__}__{'interpreted' if want else 'compiled'}"
    if copy_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(copy_name, module.__file__)
        copy = importlib.util.module_from_spec(spec)
        sys.modules[copy_name] = copy
        try:
            spec.loader.exec_module(copy)
        except BaseException:
            del sys.modules[copy_name]
            raise
    return sys.modules[copy_name]


def interpreter_shims() -> None:
    """Install what the interpreter needs to run eptk's kernels; idempotent, interpreter only."""
    _index_shim()
    _library_shim()


def _index_shim() -> None:
    """Let the interpreter run `range(lo, hi)` with bounds derived from program ids.

    Triton 3.6's interpreter keeps scalars as 1-element arrays and converts loop bounds with
    int(array), which NumPy >= 2.4 refuses for arrays that are not 0-dimensional. Triton 3.9 does
    the same conversion itself (`.squeeze()`); the shim is harmless there.
    """
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_eptk_shim", False):
        return

    def patch(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch._eptk_shim = True
    interpreter._patch_lang_tensor = patch


def _library_shim() -> None:
    """Let interpreted kernels call Triton's own @jit functions (tl.zeros, tl.sum, tl.max, ...).

    Triton builds those when triton is imported: compiled, unless TRITON_INTERPRET=1 was set then,
    and a compiled one refuses to be called from Python. While TRITON_INTERPRET=1, a call runs the
    function as an interpreted build would, and then restores the builtins of triton.language.core
    that the interpreter patched for it (an interpreted build leaves them patched, which would
    break kernels compiled later in the process). Otherwise the call fails as before.
    """
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    original = JITFunction.__call__
    if getattr(original, "_eptk_shim", False):
        return
    interpreted = {}

    def call(self, *args, **kwargs):
        if not interpreting():
            return original(self, *args, **kwargs)
        if self.fn not in interpreted:
            interpreted[self.fn] = interpreter.InterpretedFunction(self.fn)
        scope = interpreter._patch_lang(self.fn)
        try:
            return interpreted[self.fn].rewrite()(*args, **kwargs)
        finally:
            scope.restore()

    call._eptk_shim = True
    JITFunction.__call__ = call
