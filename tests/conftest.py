"""Test-wide settings: ultralytics fully offline, its settings kept out of the user's home, single-threaded torch."""
import os
import tempfile

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="cvkd-yolo-cfg-"))

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# ultralytics binds its logger to sys.stdout when first imported: import it now, before pytest captures a test's
# output, so its handler never points at a capture that a later test has closed.
import ultralytics  # noqa: E402,F401
