"""Named train / validation / test samples of a [data] case: disjoint, outside the case's window, used by training."""

import tomllib

import numpy as np
import pytest
from test_data_case import CASE, write_currents, write_dataset

from assim.case.config import validate
from assim.case.data import dataset, sample_state
from assim.case.train import sample_ranges
from assim.errors import ConfigError

TRAINING = """
[training]
layers = 1
train_windows = 3
validation_windows = 2
test_windows = 2
batch_size = 2
"""


def _case(tmp_path, splits: str, training: str = TRAINING):
    write_dataset(tmp_path / "ocean.nc", n_members=12)
    write_currents(tmp_path / "currents.nc")
    text = CASE.format(currents=str(tmp_path / "currents.nc")).replace('"ocean.nc"', f'"{tmp_path / "ocean.nc"}"')
    text = text.replace("climatology = { index = [0, 8] }", "climatology = { index = [0, 4] }\n" + splits)
    return validate(tomllib.loads(text + training))


SPLITS = "train = { index = [0, 4] }\nvalidation = { labels = [5, 6] }\ntest = { start = 8, stop = 10 }\n"


def test_splits_become_disjoint_window_samples_in_order(tmp_path):
    case = _case(tmp_path, SPLITS)
    data = dataset(case)
    assert data.splits == {"train": [1, 2, 3, 4], "validation": [5, 6], "test": [7, 8, 9]}
    assert data.provenance["splits"] == {"train": ["0", "1", "2", "3"], "validation": ["5", "6"],
                                         "test": ["8", "9", "10"]}  # fmt: skip
    assert data.provenance["climatology_test_overlap"] == 0  # B came from members 0-3 only
    ranges = sample_ranges(case)
    assert ranges == {"train": [1, 2, 3], "validation": [5, 6], "test": [7, 8]}
    state, label, _ = sample_state(case, data, 7)
    assert label == "8"
    import xarray as xr

    with xr.open_dataset(tmp_path / "ocean.nc") as ds:  # member 8, latitude turned ascending
        np.testing.assert_array_equal(state, ds["temp"].isel(member=8).values[::-1])


def test_overlapping_splits_are_refused(tmp_path):
    case = _case(tmp_path, "train = { index = [0, 4] }\nvalidation = { labels = [3, 6] }\ntest = { labels = [9] }\n")
    with pytest.raises(ConfigError, match="also in data.train"):
        dataset(case)


def test_the_case_window_in_a_split_is_refused(tmp_path):
    case = _case(tmp_path, "train = { index = [0, 4] }\nvalidation = { labels = [5] }\ntest = { labels = [11] }\n")
    with pytest.raises(ConfigError, match="own window"):
        dataset(case)


def test_too_few_split_samples_for_the_training_counts(tmp_path):
    case = _case(tmp_path, SPLITS, TRAINING.replace("validation_windows = 2", "validation_windows = 3"))
    with pytest.raises(ConfigError, match="data.validation has 2 samples, fewer than 3"):
        sample_ranges(case)


def test_half_given_splits_are_a_schema_error(tmp_path):
    with pytest.raises(ConfigError, match="all three"):
        _case(tmp_path, "train = { index = [0, 4] }\n")


def test_overlapping_index_splits_are_refused_without_a_sample_coordinate(tmp_path):
    """A sample dimension without labels: the selections are checked by position."""
    import xarray as xr

    case = _case(tmp_path, "train = { index = [0, 4] }\nvalidation = { index = [3, 5] }\ntest = { index = [6, 8] }\n")
    path = tmp_path / "ocean.nc"
    with xr.open_dataset(path) as ds:
        bare = ds.load().drop_vars("member")
    bare.to_netcdf(path)
    with pytest.raises(ConfigError, match="also in data.train"):
        dataset(case)
