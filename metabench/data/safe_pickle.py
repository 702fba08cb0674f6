"""Reading pickles that came from the internet: a pickle can name any importable callable and
have it called while it loads (``os.system`` included), so the datasets' pickles (miniImageNet,
tieredImageNet, CIFAR-100) are read with an unpickler that resolves only what numpy needs to
rebuild arrays, dtypes and scalars, and a few plain containers; any other global is refused
before it is called. Python-2 pickles load too (their byte strings are decoded as latin1, as
numpy requires)."""

from __future__ import annotations

import codecs
import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy >= 2 moved the modules its pickles name; older pickles name numpy.core
    from numpy._core import multiarray, numeric
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core import multiarray, numeric  # type: ignore[no-redef]

from metabench.errors import DataError

_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
_BUILTINS = ("builtins", "__builtin__")  # __builtin__: Python 2's name
_PLAIN = {"set": set, "frozenset": frozenset, "bytearray": bytearray, "complex": complex}

ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(m, "_reconstruct"): multiarray._reconstruct for m in _MULTIARRAY},  # protocols 0-4
    **{(m, "scalar"): multiarray.scalar for m in _MULTIARRAY},  # np.int64(3) and the like
    **{(m, "_frombuffer"): numeric._frombuffer for m in _NUMERIC},  # protocol 5
    **{(m, n): obj for m in _BUILTINS for n, obj in _PLAIN.items()},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
}


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, qualified: str):
        super().__init__(qualified)
        self.qualified = qualified


class _DataUnpickler(pickle.Unpickler):
    """Resolves only the globals in ALLOWED; everything else raises RefusedGlobal."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal(f"persistent id {pid!r}")


def safe_load(path: str | Path) -> Any:
    """The numpy arrays and plain containers pickled in ``path``; a DataError naming the file
    if it is unreadable or refers to anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as e:
        raise DataError(f"{path} is not a plain data pickle: it refers to {e.qualified}; refused "
                        "(only numpy arrays and plain containers are read)") from None
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except Exception as e:  # truncated or malformed: whatever the parser raised
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path} is not a readable pickle ({reason})") from None
