"""mclcore/_io.py's resumable measurements: a killed run of independent cells, started again with the same key,
computes only the missing cells and gives the uninterrupted result; another key, or a damaged partial file, is
started over (never reused); the partial file goes once the result is written."""
import json
import os

import pytest

from mclcore._io import file_digest, partial_path, remove_partial, resumable_cells, write_json_atomic

NAMES = ["a", "b", "c", "d"]


def cell(name):
    return {"name": name, "value": [0.1 * (ord(name) - 96), 1 / 3]}        # floats that must read back exactly


class Killed(Exception):
    pass


def counting(calls, kill_at=None):
    def compute(name):
        if name == kill_at:
            raise Killed(name)
        calls.append(name)
        return cell(name)
    return compute


def test_a_killed_run_resumes_after_its_last_finished_cell_and_gives_the_uninterrupted_result(tmp_path):
    path = str(tmp_path / "result.json")
    key = {"checkpoint_sha256": "x" * 64, "samples": {"steps": 4, "sizes": (2, 3)}}    # a tuple: reads back a list
    whole = resumable_cells(None, key, NAMES, cell)
    assert os.listdir(tmp_path) == []                                    # path None: a plain loop, nothing written
    calls, lines = [], []
    with pytest.raises(Killed):
        resumable_cells(path, key, NAMES, counting(calls, kill_at="c"), log=lines.append)
    assert calls == ["a", "b"] and os.path.exists(partial_path(path)) and not os.path.exists(path)
    assert list(json.load(open(partial_path(path)))["cells"]) == ["a", "b"]
    calls = []
    out = resumable_cells(path, key, NAMES, counting(calls), log=lines.append)
    assert calls == ["c", "d"] and len(lines) == 1 and "2 finished cell(s) reused: a, b" in lines[0]
    assert out == whole and list(out) == NAMES
    write_json_atomic(out, path)
    remove_partial(path)
    assert os.listdir(tmp_path) == ["result.json"]
    remove_partial(path)                                                 # none left: no error


@pytest.mark.parametrize("damage", ["other key", "truncated", "not a dict"])
def test_a_partial_file_of_something_else_is_started_over(tmp_path, damage):
    path = str(tmp_path / "result.json")
    key = {"checkpoint_sha256": "y" * 64}
    with pytest.raises(Killed):
        resumable_cells(path, key, NAMES, counting([], kill_at="c"), log=lambda _: None)
    part = partial_path(path)
    if damage == "other key":
        key = {"checkpoint_sha256": "z" * 64}                            # e.g. the run was trained again
    elif damage == "truncated":
        text = open(part).read()
        open(part, "w").write(text[:20])
    else:
        json.dump([1, 2], open(part, "w"))
    calls, lines = [], []
    out = resumable_cells(path, key, NAMES, counting(calls), log=lines.append)
    assert calls == NAMES and len(lines) == 1 and "starting over" in lines[0]
    assert out == {n: cell(n) for n in NAMES}
    assert json.load(open(part))["key"] == key                          # the new cells, under the new key


def test_partial_path_and_file_digest(tmp_path):
    assert partial_path("a/b/mcl_probe.json") == "a/b/mcl_probe.partial.json"
    f = tmp_path / "ck.pt"
    f.write_bytes(b"\0" * (3 << 20) + b"1")                              # longer than one read block
    d = file_digest(str(f))
    assert len(d) == 64 and d == file_digest(str(f))
    f.write_bytes(b"\0" * (3 << 20) + b"2")
    assert file_digest(str(f)) != d
