"""Adapters trained on one base model are never trained further or served on another."""

import json

import pytest

from service.store.s3t import LiveUnit
from service.training import _check_base_model


def unit(path) -> LiveUnit:
    return LiveUnit(0, 0, (0, 1), 1, 2, frozenset(), str(path), 2)


def test_units_trained_on_another_base_model_are_refused(tmp_path):
    adapter = tmp_path / "unit"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "old")}))
    _check_base_model([unit(adapter), unit(None)], tmp_path / "old")  # the same model: fine
    with pytest.raises(ValueError, match=r"trained on .*old, not on .*new"):
        _check_base_model([unit(adapter)], tmp_path / "new")
