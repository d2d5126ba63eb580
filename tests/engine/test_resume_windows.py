"""Kill windows of a run: between the CSV row and last.pt, during the final.pt write, and a failed write."""
import errno

import pytest
import torch

from cvkd.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from .conftest import run_tool


def _rows(run):
    return (run / "results.csv").read_text().splitlines()[1:]


def test_resume_without_last_pt_drops_stale_rows(tmp_path, tiny_run):
    """Killed after epoch 1's CSV row but before its last.pt: the resumed run starts over with a clean CSV."""
    r = run_tool("train.py", [*tiny_run, "model.name=yolov8n.yaml", "train.epochs=1", "name=a"])
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "a"
    (run / "last.pt").unlink()
    (run / "final.pt").unlink()
    r = run_tool("train.py", [f"resume={run}"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert [row.split(",")[0] for row in _rows(run)] == ["1"]
    assert (run / "final.pt").is_file()


def test_resume_writes_final_pt_killed_during_its_write(tmp_path, tiny_run):
    r = run_tool("train.py", [*tiny_run, "model.name=yolov8n.yaml", "train.epochs=1", "name=b"])
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "b"
    final = load_checkpoint(run / "final.pt", kind="detector")
    (run / "final.pt").unlink()
    (run / "final.pt.tmp").write_bytes(b"half a file")  # what a kill during the write leaves
    r = run_tool("train.py", [f"resume={run}"])
    assert r.returncode == 0, r.stderr[-2000:]
    again = load_checkpoint(run / "final.pt", kind="detector")
    assert all(torch.equal(again["model"][k], v) for k, v in final["model"].items())
    assert len(_rows(run)) == 1


def test_full_disk_is_one_line_keeps_previous_and_no_tmp(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, "detector", {"w": torch.ones(2)}, {})

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(path, "detector", {"w": torch.zeros(2)}, {})
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "No space left" in msg and "intact" in msg, msg
    assert not (tmp_path / "last.pt.tmp").exists()
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))


def test_read_only_folder_is_one_line(tmp_path, monkeypatch):
    def read_only(obj, f, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(f))

    monkeypatch.setattr(torch, "save", read_only)
    with pytest.raises(CheckpointError, match="cannot write last.pt \\(Read-only file system\\)") as e:
        save_checkpoint(tmp_path / "last.pt", "detector", {}, {})
    assert str(tmp_path) in str(e.value) and not list(tmp_path.iterdir())
