"""cvkd: knowledge distillation for compact object detectors.

The Python API (each returns its result; errors are :class:`cvkd.errors.CvkdError`, one line each)::

    import cvkd
    run = cvkd.distill("configs/cctv_distill.yaml", kd={"teacher": "teacher.pt"})
    cvkd.evaluate(run["run_dir"] + "/final.pt", data="configs/cctv_distill.yaml")
    cvkd.export(run["run_dir"] + "/final.pt", imgsz=320)
    cvkd.predict(run["run_dir"] + "/final.pt", "footage.mp4", out="runs/predict")
"""
__version__ = "0.1.0"

from .api import distill, evaluate, export, predict, train, train_lm  # noqa: E402 (light: imports on call)

__all__ = ["__version__", "distill", "evaluate", "export", "predict", "train", "train_lm"]
