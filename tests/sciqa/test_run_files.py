import hashlib
import json
import re

import pytest
import yaml

from sciqa.config import load_config
from sciqa.io import atomic_path, write_json
from sciqa.runs import file_digest, write_run_files


def test_atomic_path_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.json"
    write_json({"v": 1}, target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_run_files_hold_resolved_config_and_input_hashes(tmp_path):
    data = tmp_path / "in.csv"
    data.write_text("a\n1\n")
    config = load_config(None, ["seed=7"])
    manifest = write_run_files(tmp_path / "run", "test", config, inputs=[data], extra={"rows": 1})
    written = json.loads(manifest.read_text())
    assert written["stage"] == "test"
    assert written["rows"] == 1
    digest = "sha256:" + hashlib.sha256(b"a\n1\n").hexdigest()
    assert written["inputs"] == [{"path": str(data), "bytes": 4, "sha256": digest}]
    assert "pandas" in written["libraries"]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["seed"] == 7


@pytest.mark.parametrize(
    "content", [b"", b"x", bytes(range(256)) * 5000], ids=["empty", "one-byte", "1.28MB"]
)
def test_digest_is_the_sha256_of_the_bytes(tmp_path, content):
    path = tmp_path / "f"
    path.write_bytes(content)  # 1.28MB: more than one 1 MiB chunk
    digest = file_digest(path)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert digest == "sha256:" + hashlib.sha256(content).hexdigest()
    assert file_digest(path, chunk=7) == digest  # the chunk size changes nothing


def test_digest_changes_with_content(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("x")
    b.write_text("y")
    assert file_digest(a) != file_digest(b)
    b.write_text("x")
    assert file_digest(a) == file_digest(b)  # same bytes, same digest, whatever the name
