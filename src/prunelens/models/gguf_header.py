"""A cheap check that a ``.gguf`` file is one, and complete, before it is converted.

A file named ``.gguf`` that is something else, or a GGUF file cut short by a failed download, otherwise
fails deep inside the conversion with a long traceback that names neither the file nor the cause. This
reads only the header (metadata and tensor descriptions, not the weights), as
:func:`prunelens.utils.artifacts.check_safetensors` does for safetensors, and raises
:class:`~prunelens.utils.artifacts.ArtifactError` (an input error) naming the file and what is wrong.

The layout read here is the GGUF format's (versions 2 and 3): magic ``GGUF``, version, tensor count,
metadata count, the metadata key/value pairs, then per tensor its name, shape, type and offset into the
data section, which starts at the next multiple of ``general.alignment`` (default 32).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from prunelens.utils.artifacts import ArtifactError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
#: the sizes of the fixed-size metadata value types, by their GGUF type code
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class _Truncated(Exception):
    """The header promises more bytes than the file holds."""


class _Header:
    """Reads the header's fields in order, refusing to read past the end of the file."""

    def __init__(self, fh: BinaryIO, size: int):
        self.fh, self.size = fh, size

    def take(self, n: int) -> bytes:
        if n < 0 or self.fh.tell() + n > self.size:
            raise _Truncated
        return self.fh.read(n)

    def skip(self, n: int) -> None:
        if n < 0 or self.fh.tell() + n > self.size:
            raise _Truncated
        self.fh.seek(n, 1)

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> bytes:
        return self.take(self.u64())

    def value(self, vtype: int):
        """One metadata value (returned for scalars, skipped for strings and arrays)."""
        if vtype in _SCALAR_SIZES:
            raw = self.take(_SCALAR_SIZES[vtype])
            return int.from_bytes(raw, "little") if vtype in (4, 10) else None
        if vtype == _STRING:
            self.skip(self.u64())
            return None
        if vtype == _ARRAY:
            item, count = self.u32(), self.u64()
            if item in _SCALAR_SIZES:
                self.skip(count * _SCALAR_SIZES[item])
            else:
                for _ in range(count):
                    if self.fh.tell() >= self.size:
                        raise _Truncated
                    self.value(item)
            return None
        raise ValueError(f"unknown metadata value type {vtype}")


def _tensor_bytes(ggml_type: int, shape: list[int]) -> int:
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


def check_gguf(path: str | Path) -> None:
    """Verify that ``path`` is a GGUF file whose declared tensors all lie inside it."""
    path = Path(path)
    corrupt = "is incomplete or corrupt"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = _Header(fh, size)
            try:
                if fh.read(4) != MAGIC:
                    raise ArtifactError(
                        path, "is not a GGUF file (it does not start with the GGUF magic bytes)"
                    )
                version = head.u32()
                if version not in VERSIONS:
                    raise ArtifactError(
                        path, f"{corrupt}: GGUF version {version} (versions {VERSIONS} are supported)"
                    )
                n_tensors, n_kv = head.u64(), head.u64()
                alignment = DEFAULT_ALIGNMENT
                for _ in range(n_kv):
                    key = head.string()
                    value = head.value(head.u32())
                    if key == b"general.alignment" and value:
                        alignment = value
                end = 0
                tensors = []
                for _ in range(n_tensors):
                    head.string()
                    shape = [head.u64() for _ in range(head.u32())]
                    tensors.append((head.u32(), shape, head.u64()))
                data_start = -(-fh.tell() // alignment) * alignment
                for ggml_type, shape, offset in tensors:
                    end = max(end, data_start + offset + _tensor_bytes(ggml_type, shape))
            except ArtifactError:
                raise
            except _Truncated:
                raise ArtifactError(
                    path, f"{corrupt}: its header runs past the end of the file ({size:,} bytes)"
                ) from None
            except (ValueError, KeyError) as exc:  # an unknown value or tensor type: bytes that are not GGUF
                raise ArtifactError(path, f"{corrupt}: unreadable GGUF header ({exc})") from None
    except OSError as exc:
        raise ArtifactError(path, f"cannot be read ({exc})") from None
    if end > size:
        raise ArtifactError(
            path, f"{corrupt}: its tensors need {end:,} bytes, the file has {size:,} (a download cut short?)"
        )
