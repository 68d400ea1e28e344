"""The four dtypes a state may have, by name, without importing ml_dtypes until bfloat16 is needed."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import StateFormatError

# name in the metadata -> dtype code in the safetensors header
SAFETENSORS_CODES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}
DTYPE_NAMES = tuple(SAFETENSORS_CODES)


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype for a metadata dtype name."""
    if name == "bfloat16":
        import ml_dtypes  # a numpy add-on, loaded only for bfloat16

        bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    if name not in SAFETENSORS_CODES:
        raise StateFormatError(f"unsupported dtype {name!r}; expected one of {', '.join(DTYPE_NAMES)}")
    return np.dtype(name)


def dtype_name(dtype: Any) -> str:
    """The metadata name of a numpy dtype; `StateFormatError` for any other dtype."""
    name: str = np.dtype(dtype).name  # ml_dtypes registers its dtype's name as "bfloat16"
    if name not in SAFETENSORS_CODES:
        raise StateFormatError(f"unsupported dtype {name}; expected one of {', '.join(DTYPE_NAMES)}")
    return name


def little_endian(array: Any) -> np.ndarray:
    """`array` as a numpy array in little-endian byte order, as files store it (a copy only when swapped)."""
    native: np.ndarray = np.asarray(array)
    if native.dtype.byteorder == ">" or (native.dtype.byteorder == "=" and not np.little_endian):
        return native.astype(native.dtype.newbyteorder("<"))
    return native
