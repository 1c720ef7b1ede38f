"""The model registry: which model makes an image, and how.

Pure data and no torch: the API process reads it to validate ``baseModel``
and to say which models exist, the worker to load them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_FILE = Path(__file__).with_name("models.yaml")

Family = Literal["sd", "sdxl", "pixart_sigma", "flux"]
Scheduler = Literal["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "lcm", "flow_euler"]
FiveSteps = Annotated[list[Annotated[int, Field(ge=1, le=200)]], Field(min_length=5, max_length=5)]
FiveScales = Annotated[
    list[Annotated[float, Field(ge=0, le=30)]], Field(min_length=5, max_length=5)
]


class RegistryError(ValueError):
    """The registry file is missing, malformed, or names something that does not exist."""


class SourceKind(StrEnum):
    HUB = "hub"
    FOLDER = "folder"
    SINGLE_FILE = "single_file"


#: The pipeline components of each family that a registry model may take from
#: another source (``components``): the parts that hold weights, and their tokenizers.
FAMILY_COMPONENTS: dict[str, tuple[str, ...]] = {
    "sd": ("unet", "vae", "text_encoder", "tokenizer"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
    "pixart_sigma": ("transformer", "vae", "text_encoder", "tokenizer"),
    "flux": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
}


class ComponentSpec(BaseModel):
    """One component of a model's pipeline, from a source of its own (a hub id or a
    local folder), such as a transformer published without the rest of its pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1)
    subfolder: str | None = None
    variant: str | None = None
    revision: str | None = None

    @model_validator(mode="after")
    def _not_a_single_file(self) -> ComponentSpec:
        if self.source.endswith((".safetensors", ".ckpt")):
            raise ValueError(
                "a component's source is a hub id or a diffusers folder (with `subfolder` "
                "where the component lives inside it), not a single checkpoint file"
            )
        return self


class Refine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    from_quality: int = Field(ge=1, le=5)
    strength: float = Field(0.3, gt=0, lt=1)


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Family
    source: str = Field(min_length=1)
    config: str | None = None  # the layout of a single-file checkpoint
    variant: str | None = None
    revision: str | None = None
    resolution: int = Field(ge=64, le=4096, multiple_of=8)
    scheduler: Scheduler | None = None
    timestep_spacing: Literal["leading", "linspace", "trailing"] | None = None
    steps: FiveSteps
    guidance: FiveScales
    refine: Refine | None = None
    negative_prompt: str | None = None
    #: components taken from elsewhere, over those of ``source``
    components: dict[str, ComponentSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _components_exist(self) -> ModelSpec:
        known = FAMILY_COMPONENTS[self.family]
        unknown = [name for name in self.components if name not in known]
        if unknown:
            raise ValueError(
                f"components: {', '.join(unknown)} is not a component of a {self.family} "
                f"pipeline; it has {', '.join(known)}"
            )
        return self

    @model_validator(mode="after")
    def _single_file_has_config(self) -> ModelSpec:
        if self.source.endswith((".safetensors", ".ckpt")) and not self.config:
            raise ValueError(
                "a single-file checkpoint needs `config`: a diffusers folder or hub id "
                "with the same architecture (for example the model it was fine-tuned from)"
            )
        return self


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: dict[str, ModelSpec]
    slots: dict[Literal[2, 3], dict[Literal["default", "sigma", "turbo"], str]]


@dataclass(frozen=True, slots=True)
class Source:
    kind: SourceKind
    location: str  # hub id, or an absolute path
    config: str | None  # for single files: a hub id or an absolute path


@dataclass(frozen=True, slots=True)
class ComponentSource:
    """Where one overriding component comes from."""

    name: str  # the pipeline's component: "transformer", "vae", ...
    kind: SourceKind  # HUB or FOLDER
    location: str  # hub id, or an absolute path
    subfolder: str | None
    variant: str | None
    revision: str | None

    @property
    def label(self) -> str:
        return f"{self.location}/{self.subfolder}" if self.subfolder else self.location

    def download_patterns(self) -> tuple[list[str], list[str]]:
        """The files of this component in its hub repository, and those to skip:
        its configuration and tokenizer files, and its safetensors weights (the
        variant's where one is named, else the plain ones)."""
        prefix = f"{self.subfolder}/" if self.subfolder else ""
        allow = [f"{prefix}*.json", f"{prefix}*.txt", f"{prefix}*.model"]
        if self.variant is None:
            allow.append(f"{prefix}*.safetensors")
            ignore = [f"{prefix}*.{v}{sep}*" for v in ("fp16", "bf16", "fp32") for sep in ".-"]
        else:
            allow.append(f"{prefix}*.{self.variant}*.safetensors")
            ignore = []
        return allow, ignore


@dataclass(frozen=True, slots=True)
class Resolved:
    name: str
    spec: ModelSpec
    source: Source
    components: tuple[ComponentSource, ...] = ()

    def steps_for(self, quality: int) -> int:
        return self.spec.steps[quality - 1]

    def guidance_for(self, creativity: int) -> float:
        return self.spec.guidance[creativity - 1]

    def refines(self, quality: int) -> bool:
        refine = self.spec.refine
        return refine is not None and quality >= refine.from_quality


def _is_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text.endswith((".safetensors", ".ckpt"))


class Registry:
    def __init__(
        self, models: dict[str, ModelSpec], slots: dict[int, dict[str, str]], *, path: Path
    ) -> None:
        self.models = models
        self.slots = slots
        self.path = path
        for version, modes in slots.items():
            for mode, name in modes.items():
                if name not in models:
                    raise RegistryError(
                        f"{path}: slot {version}/{mode} names the model {name!r}, "
                        f"which is not under `models`"
                    )

    @classmethod
    def load(cls, path: str | Path | None = None) -> Registry:
        file = Path(path).expanduser() if path else DEFAULT_FILE
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise RegistryError(f"cannot read the model registry {file}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise RegistryError(f"the model registry {file} is not valid YAML: {exc}") from exc
        try:
            parsed = _File.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise RegistryError(f"the model registry {file} is invalid: {problems}") from None
        slots: dict[int, dict[str, str]] = {
            int(v): {str(m): n for m, n in modes.items()} for v, modes in parsed.slots.items()
        }
        return cls(parsed.models, slots, path=file.resolve())

    def _absolute(self, text: str) -> str:
        path = Path(os.path.expanduser(text))
        return str(path if path.is_absolute() else (self.path.parent / path).resolve())

    def source_of(self, spec: ModelSpec) -> Source:
        absolute = self._absolute

        if _is_path(spec.source):
            location = absolute(spec.source)
            kind = (
                SourceKind.SINGLE_FILE
                if location.endswith((".safetensors", ".ckpt"))
                else SourceKind.FOLDER
            )
        else:
            kind, location = SourceKind.HUB, spec.source
        config = spec.config
        if config is not None and _is_path(config):
            config = absolute(config)
        return Source(kind, location, config)

    def components_of(self, spec: ModelSpec) -> tuple[ComponentSource, ...]:
        out = []
        for name, part in spec.components.items():
            if _is_path(part.source):
                kind, location = SourceKind.FOLDER, self._absolute(part.source)
            else:
                kind, location = SourceKind.HUB, part.source
            out.append(
                ComponentSource(name, kind, location, part.subfolder, part.variant, part.revision)
            )
        return tuple(out)

    def get(self, name: str) -> Resolved:
        spec = self.models.get(name)
        if spec is None:
            raise RegistryError(f"no model named {name!r}; known: {', '.join(sorted(self.models))}")
        return Resolved(name, spec, self.source_of(spec), self.components_of(spec))

    def resolve(self, system_version: int, mode: str, base_model: str | None = None) -> Resolved:
        """The model for a request: its ``baseModel`` if given, else its slot."""
        if base_model:
            return self.get(base_model)
        name = self.slots.get(system_version, {}).get(mode)
        if name is None:
            raise RegistryError(
                f"the model registry has no model for systemVersion {system_version} "
                f"and mode {mode!r}"
            )
        return self.get(name)
