"""Reading the header of a bare hnswlib file (``Index.save_index``), for adoption.

hnswlib's file starts with a fixed header (``HierarchicalNSW::saveIndex``),
followed by the level-0 records of every element: links, vector, label. The
dimension is not stored, but follows from the record layout (vector bytes =
``label_offset - offset_data``, float32); the labels and the "deleted" marks
are read from the records through a memory map, without loading the graph.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rechub_serving import NotAnIndexError

__all__ = ["NativeHeader", "read_native_header"]

# offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset, offsetData (size_t),
# maxlevel, enterpoint_node (int32), maxM, maxM0, M (size_t), mult (double), ef_construction (size_t)
_HEADER = struct.Struct("<6Q2i3Qd1Q")
_DELETE_MARK = 0x01  # bit in byte 2 of an element's level-0 link header


@dataclass(frozen=True)
class NativeHeader:
    """What adoption needs from an hnswlib file."""

    dim: int
    elements: int
    max_elements: int
    m: int
    ef_construction: int
    labels: np.ndarray  # label of each element
    deleted: np.ndarray  # bool, marked deleted

    @property
    def live(self) -> int:
        return int((~self.deleted).sum())


def read_native_header(path: Path) -> NativeHeader:
    """Parse and sanity-check the header of an hnswlib file; raise NotAnIndexError if it is not one."""
    size = path.stat().st_size
    if size < _HEADER.size:
        raise NotAnIndexError(f"{path} is too short to be an hnswlib index ({size} bytes)")
    with open(path, "rb") as fh:
        fields = _HEADER.unpack(fh.read(_HEADER.size))
    offset0, max_elements, count, record, label_offset, offset_data, _, _, _, _, m, _, ef_construction = fields
    vector_bytes = label_offset - offset_data
    plausible = (
        offset0 == 0
        and 0 < count <= max_elements
        and 0 < offset_data < label_offset < record
        and vector_bytes % 4 == 0
        and record - label_offset == 8
        and _HEADER.size + count * record <= size
    )
    if not plausible:
        raise NotAnIndexError(f"{path} is not an hnswlib index file (its header does not match hnswlib's layout)")
    level0 = np.memmap(path, dtype=np.uint8, mode="r", offset=_HEADER.size, shape=(count, record))
    labels = np.ascontiguousarray(level0[:, label_offset:record]).view("<u8").ravel().astype(np.int64)
    deleted = (np.asarray(level0[:, 2]) & _DELETE_MARK).astype(bool)
    del level0
    return NativeHeader(vector_bytes // 4, count, max_elements, m, ef_construction, labels, deleted)
