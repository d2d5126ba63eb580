"""Test-wide settings: ultralytics fully offline, its settings kept out of the user's home, single-threaded torch."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")
if "YOLO_CONFIG_DIR" not in os.environ:  # a folder of this test session's own, removed when it ends
    os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="cvkd-yolo-cfg-")
    atexit.register(shutil.rmtree, os.environ["YOLO_CONFIG_DIR"], ignore_errors=True)

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# ultralytics binds its logger to sys.stdout when first imported: import it now, before pytest captures a test's
# output, so its handler never points at a capture that a later test has closed.
import ultralytics  # noqa: E402,F401
