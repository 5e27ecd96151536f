"""Optional extras: which one a missing module comes from, said in one line instead of a traceback."""

from __future__ import annotations

from typing import NoReturn

TENSORFLOW = (
    "install TensorFlow: pip install 'tfwhale[cpu]' (or 'tfwhale[gpu]'; on Kaggle, Colab and TPU VMs keep "
    "the platform's own TensorFlow)"
)
SERVE = "install the catalogue app's extra: pip install 'tfwhale[serve]'"
_EXTRA_OF = {
    "tensorflow": TENSORFLOW,
    "keras": TENSORFLOW,
    "starlette": SERVE,
    "fastapi": SERVE,
    "uvicorn": SERVE,
    "jinja2": SERVE,
    "multipart": SERVE,
    "python_multipart": SERVE,
    "pydantic": SERVE,
}


def missing_extra_message(error: ModuleNotFoundError, command: str) -> str | None:
    """One line naming the extra that brings the missing module; None for a module no extra brings."""
    top = (error.name or "").split(".")[0]
    hint = _EXTRA_OF.get(top)
    return None if hint is None else f"{command}: needs the module {top!r}, which is not installed; {hint}"


def exit_for_missing(error: ModuleNotFoundError, command: str) -> NoReturn:
    """Exit with that one line (status 1); re-raise a missing module no extra brings (a broken install)."""
    message = missing_extra_message(error, command)
    if message is None:
        raise error
    raise SystemExit(message)
