"""run_identity_diff: what keeps a rerun with another config from reusing a run folder (mclcore.train.loop)."""
import json

from mclcore.studies.worldmodel.config import build_config
from mclcore.train.config import apply_overrides, to_dict
from mclcore.train.loop import run_identity_diff


def test_fields_added_since_a_run_was_written_take_their_defaults(tmp_path):
    cfg = build_config("acg", False, "cpu-smoke")
    saved = to_dict(cfg)
    del saved["model"]["idm_inputs"]                 # a run written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert run_identity_diff(str(tmp_path), cfg) == []
    other = apply_overrides(cfg, ["model.idm_inputs=delta"])   # not the default: a different run
    assert run_identity_diff(str(tmp_path), other) == ["model.idm_inputs: saved 'frames' vs given 'delta'"]
    assert run_identity_diff(str(tmp_path / "new"), cfg) == []
