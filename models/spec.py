"""The JobSpec: the public contract of a training job (see DESIGN.md).

Every field is optional except ``data.dataset``. Unknown fields are refused, numbers are bounded and
cross-field rules are checked here, so a bad spec is a 422 naming the field before anything is
written.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

BUILTIN_DATASETS = (
    "digits",
    "iris",
    "wine",
    "breast_cancer",
    "diabetes",
    "moons",
    "circles",
    "blobs",
    "gaussian_regression",
)
# Built-in datasets that are images, with their (C, H, W): the ones data.augment applies to.
IMAGE_BUILTINS: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 8)}

# Parameters each generated dataset accepts, with their defaults (scikit-learn's make_* functions).
GENERATOR_DEFAULTS: dict[str, dict[str, int | float]] = {
    "moons": {"n_samples": 1000, "noise": 0.2},
    "circles": {"n_samples": 1000, "noise": 0.1, "factor": 0.5},
    "blobs": {"n_samples": 1000, "centers": 3, "n_features": 2, "cluster_std": 1.0},
    "gaussian_regression": {"n_samples": 1000, "n_features": 10, "n_informative": 10, "noise": 0.1},
}

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class Strict(BaseModel):
    # Non-finite numbers are refused everywhere: JSONB cannot store NaN or infinity.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Tags are stored with the job and returned with every listing: their number and size are bounded.
MAX_TAGS = 64
TagKey = Annotated[str, Field(min_length=1, max_length=64)]
TagValue = Annotated[str, Field(max_length=256)] | Annotated[int, Field(ge=-(2**53), le=2**53)] | float | bool


class Split(Strict):
    val: float = Field(0.2, ge=0.0, lt=1.0)
    test: float = Field(0.2, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _leaves_training_data(self) -> Split:
        if self.val + self.test >= 0.9:
            raise ValueError("val + test must be below 0.9 so that training data remains")
        return self


class Augment(Strict):
    """Image augmentation, drawn afresh for every training batch on the device (images only)."""

    # Pad each side by this many pixels (with zeros: the channel mean once normalized), then crop
    # back to the original size at a random offset; 0 is off.
    random_crop: int = Field(0, ge=0, le=64)
    hflip: bool = False  # mirror left-right with probability 1/2


class Data(Strict):
    # A built-in name, or one of the project's uploads by its id or its name (the API resolves a
    # name to the id at submission, so a stored job always names its upload by id).
    dataset: str = Field(min_length=1, max_length=200)
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)
    task: Literal["auto", "classification", "regression"] = "auto"
    split: Split = Field(default_factory=Split)
    test_dataset: str | None = Field(None, min_length=1, max_length=200)
    train_size: int | None = Field(None, ge=2, le=10_000_000)
    label_noise: Fraction = 0.0
    input_noise: float = Field(0.0, ge=0.0, le=100.0)
    scaling: Literal["none", "minmax", "mean", "standardize", "unit_length"] = "none"
    shuffle: bool = True
    augment: Augment | None = None

    @field_validator("dataset", "test_dataset")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        # Any other text may be an upload's name: the API checks it exists in the project.
        if value is not None and not value.strip():
            raise ValueError("a dataset name cannot be blank")
        return value

    @field_validator("augment")
    @classmethod
    def _augment_needs_images(cls, value: Augment | None, info: ValidationInfo) -> Augment | None:
        # Uploads are checked by the API, which knows their shape; built-ins are known here.
        dataset = info.data.get("dataset")
        if value is not None and dataset in BUILTIN_DATASETS and dataset not in IMAGE_BUILTINS:
            raise ValueError(
                f"{dataset} is not an image dataset; augment needs images "
                f"({', '.join(IMAGE_BUILTINS)} or an uploaded image dataset)"
            )
        return value

    @model_validator(mode="after")
    def _params_fit_the_dataset(self) -> Data:
        if not self.params:
            return self
        allowed = GENERATOR_DEFAULTS.get(self.dataset)
        if allowed is None:
            raise ValueError(f"params: {self.dataset} is not a generated dataset and takes no parameters")
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ValueError(
                f"params: unknown parameter(s) {unknown} for {self.dataset}; allowed: {sorted(allowed)}"
            )
        return self

    @field_validator("params")
    @classmethod
    def _bounded_generator_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        for key in ("noise", "cluster_std", "factor"):
            v = params.get(key)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1000
            ):
                raise ValueError(f"{key} must be a number from 0 to 1000")
        c = params.get("centers")
        if c is not None and (not isinstance(c, int) or not 2 <= c <= 1000):
            raise ValueError("centers must be an integer from 2 to 1000")
        n = params.get("n_samples")
        if n is not None and (not isinstance(n, int) or not 10 <= n <= 1_000_000):
            raise ValueError("n_samples must be an integer from 10 to 1,000,000")
        nf = params.get("n_features")
        if nf is not None and (not isinstance(nf, int) or not 1 <= nf <= 10_000):
            raise ValueError("n_features must be an integer from 1 to 10,000")
        return params


def is_dataset_id(value: str) -> bool:
    """An uploaded dataset's id: 32 lowercase hex digits (never a name: uploads refuse such names)."""
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class Init(Strict):
    weights: Literal["default", "zeros", "normal", "xavier", "kaiming"] = "default"
    std: float | None = Field(None, gt=0, le=100)
    bias: float | None = Field(None, ge=-100, le=100)


# Architectures every worker has (worker/nets.py); plug-ins add more (models/archs.py).
BUILTIN_ARCHS = ("mlp", "linear", "cnn", "resnet18", "resnet34", "resnet50")
RESNETS = ("resnet18", "resnet34", "resnet50")


class Model(Strict):
    arch: str = Field("mlp", min_length=1, max_length=100)
    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(default_factory=lambda: [64], max_length=64)
    activation: Literal["relu", "tanh", "sigmoid", "gelu", "leaky_relu", "identity"] = "relu"
    norm: Literal["none", "batch", "layer"] = "none"
    norm_position: Literal["before_activation", "after_activation"] = "before_activation"
    dropout: float | list[Fraction] = Field(0.0)
    init: Init = Field(default_factory=Init)
    # cnn only: channels of each conv block (3x3 conv, activation, 2x2 pooling).
    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [16, 32], max_length=8
    )

    @property
    def computes_linear_function(self) -> bool:
        """A linear model, or a stack of layers without a nonlinearity (identity activations): the
        function it computes is linear whatever its depth."""
        return self.arch == "linear" or (self.arch == "mlp" and self.activation == "identity")

    @field_validator("dropout")
    @classmethod
    def _dropout_range(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if any(not 0.0 <= v < 1.0 for v in values):
            raise ValueError("dropout must be in [0, 1)")
        return value

    @model_validator(mode="after")
    def _knobs_apply_to_the_arch(self) -> Model:
        """A resnet has its own body: the knobs of the mlp/cnn body are refused, not ignored. Fields
        are compared with their defaults (a stored spec comes back with every field set)."""
        if self.arch not in RESNETS:
            return self
        a = self.arch
        if self.hidden != [64]:
            raise ValueError(f"model.hidden: {a} has no hidden layers (its head is one linear layer)")
        if self.channels != [16, 32]:
            raise ValueError(f"model.channels: only arch cnn takes channels; {a} has its own")
        if self.norm == "layer":
            raise ValueError(f"model.norm: {a} takes batch or none (layer norm is for dense layers)")
        if self.norm_position != "before_activation":
            raise ValueError(f"model.norm_position: {a}'s blocks put the norm before the activation")
        if isinstance(self.dropout, list):
            raise ValueError(f"model.dropout: {a} takes one rate, applied before its classifier")
        return self

    @model_validator(mode="after")
    def _per_layer_dropout_matches(self) -> Model:
        if isinstance(self.dropout, list) and len(self.dropout) != len(self.hidden):
            raise ValueError(
                f"dropout has {len(self.dropout)} entries but hidden has {len(self.hidden)} layers"
            )
        return self


class InitFrom(Strict):
    job: str = Field(min_length=32, max_length=32)
    checkpoint: Literal["best", "last"] = "best"
    freeze: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=64)


class Optimizer(Strict):
    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"] = "sgd"
    lr: float = Field(0.01, gt=0, le=1e3)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=10.0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> Optimizer:
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError("nesterov needs optimizer sgd with momentum > 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must lie in [0, 1)")
        return self


class Schedule(Strict):
    name: Literal["constant", "step", "cosine", "exponential", "plateau"] = "constant"
    warmup_epochs: float = Field(0, ge=0, le=10_000)
    step_epochs: int = Field(10, ge=1, le=10_000)  # step: decay every this many epochs
    gamma: float = Field(0.1, gt=0, le=1.0)  # step/exponential/plateau decay factor
    min_lr: float = Field(0.0, ge=0.0, le=1e3)  # cosine floor
    patience: int = Field(5, ge=0, le=10_000)  # plateau


class GradientNoise(Strict):
    c: float = Field(0.0, ge=0.0, le=100.0)
    r: float = Field(0.55, ge=0.0, le=10.0)


class EarlyStopping(Strict):
    patience: int = Field(10, ge=1, le=10_000)
    min_delta: float = Field(0.0, ge=0.0, le=1e6)


class Regularization(Strict):
    l2: float = Field(0.0, ge=0.0, le=100.0)
    gradient_noise: GradientNoise = Field(default_factory=GradientNoise)
    early_stopping: EarlyStopping | None = None
    grad_clip: float | None = Field(None, gt=0, le=1e6)


class CurriculumStage(Strict):
    epochs: int = Field(ge=1, le=10_000)
    label_noise: Fraction = 0.0
    input_noise: float = Field(0.0, ge=0.0, le=100.0)
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    lr: float | None = Field(None, gt=0, le=1e3)


class Checkpoints(Strict):
    every_epochs: int = Field(5, ge=1, le=10_000)
    keep_best: bool = True


class Hessian(Strict):
    every_epochs: int = Field(10, ge=0, le=10_000)  # 0: only at the best checkpoint and the end
    top_k: int = Field(5, ge=1, le=100)
    bottom_k: int = Field(1, ge=0, le=100)
    trace: bool = True
    density: bool = False
    samples: int = Field(2048, ge=1, le=1_000_000)
    enabled: bool = True


class Analysis(Strict):
    hessian: Hessian = Field(default_factory=Hessian)
    # Probe runs (a tuned optimizer, a larger model; at most a quarter of the job's compute) decide
    # model bias against optimization trouble when the training loss is large.
    probes: bool = True
    # Per-step gradient norms, per-layer gradient norms and unit statistics: what the diagnosis reads.
    diagnostics: bool = True


class Resources(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_minutes: float = Field(60, gt=0, le=7 * 24 * 60)
    # On CUDA, capture each update as one CUDA graph where the result is identical to eager mode
    # (see worker/graphed.py for when it is); off: eager updates everywhere.
    cuda_graphs: bool = True
    # Mixed precision: forward and loss under torch.autocast in this dtype (weights, optimizer and
    # Hessian spectra stay fp32); fp16 adds a gradient scaler and needs CUDA.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    @model_validator(mode="after")
    def _fp16_needs_cuda(self) -> Resources:
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("resources.precision: fp16 needs a CUDA device; on the CPU use bf16 or fp32")
        return self


class JobSpec(Strict):
    name: str = Field("", max_length=200)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    tags: dict[TagKey, TagValue] = Field(default_factory=dict, max_length=MAX_TAGS)
    data: Data
    model: Model = Field(default_factory=Model)
    init_from: InitFrom | None = None
    optimizer: Optimizer = Field(default_factory=Optimizer)
    schedule: Schedule = Field(default_factory=Schedule)
    regularization: Regularization = Field(default_factory=Regularization)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    epochs: int = Field(20, ge=1, le=10_000)
    curriculum: list[CurriculumStage] = Field(default_factory=list, max_length=100)
    checkpoints: Checkpoints = Field(default_factory=Checkpoints)
    analysis: Analysis = Field(default_factory=Analysis)
    resources: Resources = Field(default_factory=Resources)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> JobSpec:
        if self.curriculum and sum(stage.epochs for stage in self.curriculum) != self.epochs:
            total = sum(stage.epochs for stage in self.curriculum)
            raise ValueError(f"curriculum stages last {total} epochs but epochs is {self.epochs}")
        if self.model.arch == "linear" and self.model.norm != "none":
            raise ValueError("model.norm needs hidden layers; arch linear has none")
        if self.schedule.warmup_epochs >= self.epochs and self.schedule.warmup_epochs > 0:
            raise ValueError("schedule.warmup_epochs must be shorter than epochs")
        return self
