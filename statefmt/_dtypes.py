"""The dtypes statefmt stores: one table of name, safetensors code and itemsize, the only one in the package.

A state or weight may be one of the four floats (`DTYPE_NAMES`); the container also holds the
stream index's and the checksums' integers. ml_dtypes is imported only when bfloat16 is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import StateFormatError

# (metadata name, safetensors code, itemsize), in the order the safetensors writer lays tensors out
_TABLE = (
    ("uint64", "U64", 8),
    ("float64", "F64", 8),
    ("float32", "F32", 4),
    ("bfloat16", "BF16", 2),
    ("float16", "F16", 2),
    ("uint8", "U8", 1),
)
DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")  # what a layer's states or weights may be
CODES = {name: code for name, code, _ in _TABLE}  # metadata name -> safetensors code
NAMES = {code: name for name, code, _ in _TABLE}  # safetensors code -> metadata name
ITEMSIZE = {code: itemsize for _, code, itemsize in _TABLE}
LAYOUT_ORDER = {code: position for position, (_, code, _) in enumerate(_TABLE)}


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype for a layer's dtype name; `StateFormatError` for any other name."""
    if name not in DTYPE_NAMES:
        raise StateFormatError(f"unsupported dtype {name!r}; expected one of {', '.join(DTYPE_NAMES)}")
    return code_dtype(CODES[name])


def code_dtype(code: str) -> np.dtype[Any]:
    """The numpy dtype of a safetensors code of the table (the floats and the container's integers)."""
    if code == "BF16":
        import ml_dtypes  # a numpy add-on, loaded only for bfloat16

        bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(NAMES[code])


def dtype_name(dtype: Any) -> str:
    """The metadata name of a numpy dtype; `StateFormatError` for any dtype but the four floats."""
    name: str = np.dtype(dtype).name  # ml_dtypes registers its dtype's name as "bfloat16"
    if name not in DTYPE_NAMES:
        raise StateFormatError(f"unsupported dtype {name}; expected one of {', '.join(DTYPE_NAMES)}")
    return name


def little_endian(array: Any) -> np.ndarray:
    """`array` as a numpy array in little-endian byte order, as files store it (a copy only when swapped)."""
    native: np.ndarray = np.asarray(array)
    if native.dtype.byteorder == ">" or (native.dtype.byteorder == "=" and not np.little_endian):
        return native.astype(native.dtype.newbyteorder("<"))
    return native
