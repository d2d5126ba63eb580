"""Live streams in cvkd.deploy.predict: a stream that drops is reopened a bounded number of times, frames keep
counting across a reconnect, and giving up is one line (a fake capture stands in for an RTSP camera)."""
import numpy as np
import pytest

from cvkd.data import DataError
from cvkd.deploy.predict import PredictOptions, class_filter, is_stream, video_frames


class FakeCapture:
    """Delivers ``n`` frames, then read() fails (the network dropped)."""

    def __init__(self, n: int, opened: bool = True):
        self.n, self.opened, self.released = n, opened, False

    def isOpened(self):
        return self.opened

    def read(self):
        if self.n <= 0:
            return False, None
        self.n -= 1
        return True, np.zeros((8, 8, 3), np.uint8)

    def grab(self):
        return self.read()[0]

    def release(self):
        self.released = True


def test_stream_reconnects_then_gives_up_in_one_line():
    opened = []
    sessions = iter([3, 0, 2, 0, 0])  # 3 frames, a reopen that gives nothing, 2 more frames, then dead

    def opener(src):
        opened.append(FakeCapture(next(sessions)))
        return opened[-1]

    opts = PredictOptions(reconnect=2, reconnect_wait=0.0)
    got = []
    with pytest.raises(DataError) as e:
        for i, rgb, name in video_frames("rtsp://cam/1", opts, opener):
            got.append(i)
    assert got == [0, 1, 2, 3, 4]  # frame numbers run on across the reconnect
    assert len(opened) == 5  # the first open, two failed reopens in a row reset by the frames between, ...
    assert "gave up after 2 reconnect(s)" in str(e.value) and "\n" not in str(e.value)
    assert all(c.released for c in opened)


def test_video_file_ends_without_reconnecting_and_every_n():
    opened = []

    def opener(src):
        opened.append(FakeCapture(7))
        return opened[-1]

    frames = [i for i, _, _ in video_frames("clip.mp4", PredictOptions(every=3), opener)]
    assert frames == [0, 3, 6] and len(opened) == 1


def test_unopenable_stream_and_sources():
    with pytest.raises(DataError, match="cannot open the stream"):
        list(video_frames("rtsp://nowhere/x", PredictOptions(), lambda s: FakeCapture(0, opened=False)))
    assert is_stream("0") and is_stream("rtsp://a") and is_stream("https://cam/x.mjpg") and not is_stream("a.mp4")
    assert class_filter(["person", "1"], ["person", "car"]) == {0, 1} and class_filter(None, ["a"]) is None
    with pytest.raises(DataError, match="unknown class 'bus'"):
        class_filter(["bus"], ["person", "car"])
