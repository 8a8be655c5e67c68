"""EngineKeys: labels <-> an adopted file's own keys, saved and loaded beside the engine."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rechub_serving import EngineKeys, IndexFormatError


def _files(directory, meta):
    return SimpleNamespace(meta=meta, path=lambda name: directory / name)


def test_a_file_with_ids_0_to_n_is_the_identity():
    keys = EngineKeys.adopted(np.arange(5, dtype=np.int64), 5, np.zeros(0, np.int64))
    assert keys.external() is None
    labels = np.array([[0, 4, -1]])
    assert keys.of(labels) is labels and keys.labels(labels) is labels


def test_adopted_keys_map_both_ways_and_new_labels_go_above_every_old_id(tmp_path):
    live, deleted = np.array([3, 7, 42], np.int64), np.array([50], np.int64)
    keys = EngineKeys.adopted(live, 51, deleted)
    assert keys.external().tolist() == [3, 7, 42]
    labels = np.array([0, 1, 2, 3, 4])  # 3 and 4: added after adoption
    got = keys.of(labels.copy())
    assert got.tolist() == [3, 7, 42, 51, 52]  # never 50, a deleted id of the file
    assert keys.labels(np.array([[42, 3, 52, -1]])).tolist() == [[2, 0, 4, -1]]
    meta = keys.save(tmp_path)
    again = EngineKeys.load(_files(tmp_path, meta))
    assert again.of(labels.copy()).tolist() == got.tolist()


def test_damaged_saved_keys_are_refused(tmp_path):
    meta = EngineKeys.adopted(np.array([3, 7], np.int64), 8, np.zeros(0, np.int64)).save(tmp_path)
    with pytest.raises(IndexFormatError, match="first_new"):
        EngineKeys.load(_files(tmp_path, {**meta, "first_new": 5}))
    np.save(tmp_path / "keys.npy", np.array([7, 3], np.int64))
    with pytest.raises(IndexFormatError, match="sorted unique keys"):
        EngineKeys.load(_files(tmp_path, meta))
    assert EngineKeys.load(_files(tmp_path, {})).external() is None
