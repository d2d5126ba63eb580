"""cvkd: knowledge distillation for compact object detectors."""
__version__ = "0.1.0"
