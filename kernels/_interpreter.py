"""What both Triton kernels need to run under TRITON_INTERPRET=1."""


def interpreter_index_shim() -> None:
    """Let the Triton 3.6 interpreter run `range(lo, hi)` with bounds derived from program ids.

    The interpreter keeps scalars as 1-element arrays and converts loop bounds with int(array),
    which NumPy >= 2.4 refuses for arrays that are not 0-dimensional. Interpreter only; idempotent.
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
