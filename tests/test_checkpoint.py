import pytest
import torch

from cvkd.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("name", ["c.pt", "c.pt.xz"])
def test_round_trip_plain_and_xz(tmp_path, name):
    state = {"w": torch.randn(3, 4).half(), "n": torch.tensor(3)}
    save_checkpoint(tmp_path / name, "detector", state, {"family": "yolo"}, epoch=2)
    ck = load_checkpoint(tmp_path / name, kind="detector")
    assert torch.equal(ck["model"]["w"], state["w"]) and ck["epoch"] == 2 and ck["meta"] == {"family": "yolo"}
    assert not (tmp_path / (name + ".tmp")).exists()


def test_wrong_kind_corrupt_and_foreign(tmp_path):
    save_checkpoint(tmp_path / "lm.pt", "lm", {}, {})
    with pytest.raises(CheckpointError, match="is a 'lm' checkpoint, expected a 'detector'"):
        load_checkpoint(tmp_path / "lm.pt", kind="detector")
    (tmp_path / "bad.pt.xz").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.pt.xz: not a checkpoint or corrupt"):
        load_checkpoint(tmp_path / "bad.pt.xz")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="no cvkd header"):
        load_checkpoint(tmp_path / "foreign.pt")
