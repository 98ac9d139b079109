"""Training recipes, loaded from YAML and overridden with ``key=value`` strings, validated strictly.

Two shapes share the reading, the overrides and the key checks: the classification trainer's flat
:class:`Recipe` (:func:`load_recipe`), and recipes made of sections (``model:``, ``data:``, ...; the dense
tasks' large recipes) checked against a :class:`SectionSchema` (:func:`load_sectioned_recipe`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..atomic import atomic_write_text
from ..limits import (
    MAX_RECIPE_BYTES,
    MAX_RECIPE_DEPTH,
    MAX_RECIPE_NODES,
    check_adaptor_limits,
    check_model_limits,
)
from ..regular_file import FileTooLargeError, read_bounded
from ..shipped import ASSET_PREFIX, ASSETS_DIR  # noqa: F401  (ASSETS_DIR: re-exported for callers)

#: Where ``recipes/`` lives in a source checkout (recipes may be named without a path: ``quickstart``).
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


#: Names the ``method`` key accepts: the built-in methods (a test checks this equals the registry in
#: ``adaptor_peft.train.methods``); ``register_method`` adds the names of methods registered later.
METHOD_NAMES: list[str] = [
    "adaptor",
    "adaptor_s",
    "adaptor_static",
    "adaptor_t",
    "adaptor_ts",
    "a_tuning",
    "bias_tuning",
    "conv_tuning",
    "d_tuning",
    "full",
    "hybrid",
    "linear_probe",
    "lora",
    "lora_x",
]


#: ``log_with`` choices -> the packages one of which it needs (accelerate's TensorBoard tracker uses
#: torch.utils.tensorboard when the tensorboard package is installed, else tensorboardX).
LOG_WITH: dict[str, tuple[str, ...]] = {"jsonl": (), "tensorboard": ("tensorboard", "tensorboardX")}


class RecipeError(ValueError):
    """A recipe file or override is invalid (unknown key, wrong type, bad value)."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (``*name``) and counts nodes and nesting while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Compose one node, refusing aliases and anything past the node and depth limits."""
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _LimitExceeded(
                f"YAML alias '*{event.anchor}' at {event.start_mark.line + 1}:{event.start_mark.column + 1}"
                " is not allowed in recipes (aliases can expand without bound; no bundled recipe uses one):"
                " write the value out"
            )
        self._nodes += 1
        if self._nodes > MAX_RECIPE_NODES:
            raise _LimitExceeded(
                f"more than {MAX_RECIPE_NODES} YAML nodes (adaptor_peft.limits.MAX_RECIPE_NODES): "
                "not a recipe; check the file"
            )
        self._depth += 1
        try:
            if self._depth > MAX_RECIPE_DEPTH:
                mark = self.peek_event().start_mark
                raise _LimitExceeded(
                    f"nested deeper than {MAX_RECIPE_DEPTH} levels at {mark.line + 1}:{mark.column + 1} "
                    "(adaptor_peft.limits.MAX_RECIPE_DEPTH): flatten the recipe"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _LimitExceeded(Exception):
    """A recipe document breaks a limit of _BoundedLoader (turned into a RecipeError with the source)."""


def load_yaml_bounded(text: str, where: str, error: type[RecipeError] = RecipeError) -> Any:
    """Parse recipe YAML safely: no aliases, bounded size, nodes and depth; errors name ``where``."""
    if len(text) > MAX_RECIPE_BYTES:
        raise error(
            f"{where}: {len(text)} characters, more than the recipe limit {MAX_RECIPE_BYTES} "
            "(adaptor_peft.limits.MAX_RECIPE_BYTES): not a recipe; check the file"
        )
    try:
        return _compose_bounded(text)
    except _LimitExceeded as exc:
        raise error(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML: {_one_line(exc)}") from None
    except (RecursionError, ValueError, OverflowError, MemoryError) as exc:
        raise error(f"{where}: the YAML cannot be read ({type(exc).__name__}: {_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _compose_bounded(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def allow_method_name(name: str) -> None:
    """Let recipes name a newly registered training method."""
    if name not in METHOD_NAMES:
        METHOD_NAMES.append(name)


@dataclass
class Recipe:
    """Everything one training run needs; every field can be set in YAML or as ``key=value``."""

    # --- model -------------------------------------------------------------------------------
    model: Any = "test_vmamba"  # a timm/VMamba name or a VMamba config dict
    checkpoint: str | None = None  # base weights (safetensors/.pth); ``asset:`` for shipped files
    num_classes: int | None = None  # None: inferred from the training data
    model_kwargs: dict = field(default_factory=dict)  # extra constructor overrides (drop_path_rate, ...)
    reset_head: bool = False  # re-initialise the classifier head even when the checkpoint's fits (transfer)
    method: str = "adaptor"  # one of METHOD_NAMES, see adaptor_peft.train.methods
    adaptor: dict = field(default_factory=dict)  # MambaAdaptorConfig fields for method=adaptor
    method_options: dict = field(default_factory=dict)  # baseline options, e.g. LoRA {r, alpha, targets}
    # --- data --------------------------------------------------------------------------------
    train_data: str | None = None  # ImageFolder dir, .npz (x, y) or a datasets save_to_disk dir
    eval_data: str | None = None
    train_split: str | None = None  # split name inside a datasets DatasetDict
    eval_split: str | None = None
    train_limit: int | None = None  # stratified subset of the training data (VTAB-1k style: 1000)
    val_fraction: float = 0.0  # hold out this share of the training data when eval_data is not given
    img_size: int = 32
    resize: str = "pad"  # pad (centre, zeros) smaller images, resize larger; or "resize" always
    mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    augment: str = "none"  # none | timm (timm create_transform training pipeline)
    hflip: float = 0.0
    crop_scale: list = field(default_factory=lambda: [0.08, 1.0])
    auto_augment: str | None = None  # e.g. rand-m9-mstd0.5 (augment=timm)
    re_prob: float = 0.0  # random erasing (augment=timm)
    bad_images: str = "error"  # error | skip (unreadable images in an ImageFolder)
    check_images: bool | None = None  # decode ImageFolder files up front; None: <= 20k files and 256 MB
    nonfinite_pixels: str | float = "error"  # error | a 0-255 value replacing NaN/Inf pixels of array data
    num_workers: int = 0
    # --- optimisation ------------------------------------------------------------------------
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    batch_size: int = 64  # per process
    eval_batch_size: int | None = None
    grad_accum: int = 1
    lr: float = 1e-3
    head_lr: float | None = None  # a separate learning rate for the classifier head
    base_lr: float | None = None  # a separate (smaller) learning rate for base weights (booster)
    gamma_lr: float | None = None  # a separate learning rate for Adaptor-T's gamma (None: lr)
    layer_decay: float | None = None  # booster: base lr x layer_decay ** (depth from the top), e.g. 0.8
    weight_decay: float = 0.05  # never applied to norms, biases and other 1-D parameters
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # of the total steps, used when warmup_steps is 0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak lr
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    mixed_precision: str = "no"  # no | bf16 | fp16
    seed: int = 0
    cpu: bool = False  # force the CPU even when a GPU is present
    # --- run ---------------------------------------------------------------------------------
    output_dir: str = "runs/train"
    overwrite: bool = False
    resume: bool = False
    log_every: int = 10
    eval_every: int | None = None  # steps; None = about 10 evaluations per run; 0 = at the end only
    eval_limit: int | None = None  # periodic evaluations on a fixed stratified subset this large (step 0
    # and the final evaluation always use all the eval data); None = all
    eval_at_start: bool = False  # evaluate at step 0 (the "before" accuracy)
    save_every: int | None = None  # checkpoint every N steps (and always at the end)
    keep_checkpoints: int = 2
    progress: bool = True
    plot: bool = True
    log_with: str = "jsonl"  # jsonl (the .jsonl logs only) | tensorboard (also output_dir/tensorboard/)
    name: str | None = None

    def validate(self) -> Recipe:
        """Check value ranges and choices; return self."""

        def bad(key: str, why: str) -> RecipeError:
            return RecipeError(f"recipe key '{key}' = {getattr(self, key)!r}: {why}")

        choices = {
            "method": sorted(METHOD_NAMES),
            "resize": ["pad", "resize"],
            "augment": ["none", "timm"],
            "bad_images": ["error", "skip"],
            "mixed_precision": ["no", "bf16", "fp16"],
            "log_with": list(LOG_WITH),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise bad(key, f"must be one of {allowed}")
        positive = ["img_size", "batch_size", "grad_accum", "log_every", "keep_checkpoints"]
        for key in positive + ["save_every", "max_steps", "eval_batch_size", "train_limit", "eval_limit"]:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise bad(key, "must be >= 1")
        fill = self.nonfinite_pixels
        if fill != "error" and (isinstance(fill, str) or not 0 <= fill <= 255 or fill != round(fill)):
            raise bad("nonfinite_pixels", "must be 'error' or a whole pixel value in [0, 255]")
        if self.eval_every is not None and self.eval_every < 0:
            raise bad("eval_every", "must be >= 1 (steps), 0 (only at the end) or null (about 10 per run)")
        if self.num_workers < 0:
            raise bad("num_workers", "must be >= 0")
        for key in ["lr", "weight_decay", "label_smoothing", "warmup_fraction", "min_lr_ratio", "epochs"]:
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", "must be in [0, 1)")
        if self.label_smoothing >= 1.0:
            raise bad("label_smoothing", "must be < 1")
        if self.gamma_lr is not None:
            if isinstance(self.gamma_lr, bool) or not isinstance(self.gamma_lr, int | float):
                raise bad("gamma_lr", "must be a number or null")
            if not 0.0 <= self.gamma_lr < float("inf"):
                raise bad("gamma_lr", "must be finite and >= 0")
            if self.layer_decay is not None:
                raise bad("gamma_lr", "is not supported with layer_decay (the booster's groups)")
        if self.layer_decay is not None:
            if not 0.0 < self.layer_decay <= 1.0:
                raise bad("layer_decay", "must be in (0, 1]")
            if self.base_lr is None:
                raise bad("layer_decay", "needs base_lr (it scales base_lr; without it the base is frozen)")
        if self.num_classes is not None and self.num_classes < 1:
            raise bad("num_classes", "must be >= 1")
        for key in ("mean", "std"):
            if len(getattr(self, key)) != 3:
                raise bad(key, "must hold 3 values (one per RGB channel)")
        if self.epochs == 0 and self.max_steps is None:
            raise bad("epochs", "is 0 and max_steps is not set: nothing to train")
        if not isinstance(self.model, str | dict):
            raise bad("model", "must be a model name or a config mapping")
        try:  # size limits before anything is built (create_model and MambaAdaptorConfig check again)
            model = self.model if isinstance(self.model, dict) else {}
            check_model_limits({**model, **self.model_kwargs}, "recipe keys 'model' / 'model_kwargs'")
            check_adaptor_limits(self.adaptor, "recipe key 'adaptor'")
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
        return self

    def check_tracker(self) -> None:
        """Raise RecipeError when ``log_with`` needs a package that is not installed (checked by ``train``
        before anything is built; evaluating a finished run does not need it)."""
        needs = LOG_WITH[self.log_with]
        if needs and all(importlib.util.find_spec(m) is None for m in needs):
            raise RecipeError(
                f"recipe key 'log_with' = {self.log_with!r} needs {' or '.join(needs)}: "
                f"pip install adaptor_peft[{self.log_with}] (or log_with=jsonl)"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (for YAML/JSON)."""
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the resolved recipe as YAML atomically."""
        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def valid_keys() -> list[str]:
    """All recipe keys, in declaration order."""
    return [f.name for f in dataclasses.fields(Recipe)]


def did_you_mean(key: str, valid: list[str], prefix: str = "") -> str:
    """ "; did you mean 'closest'?" for an unknown key (with ``prefix`` before the name), or ""."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _unknown_key_error(key: str, valid: list[str], where: str) -> RecipeError:
    hint = did_you_mean(key, valid)
    return RecipeError(f"unknown recipe key '{key}' ({where}){hint} valid keys: {', '.join(valid)}")


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Recipe)
    return {f.name: hints[f.name] for f in dataclasses.fields(Recipe)}


def _base_types(tp: Any) -> tuple[type, ...]:
    if tp is Any:
        return ()
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return tuple(t for t in typing.get_args(tp) if t is not type(None))
    origin = typing.get_origin(tp)
    return (origin or tp,)


def _coerce(key: str, value: Any, where: str) -> Any:
    """Convert ``value`` to the declared type of recipe field ``key`` (ints to floats, '1e-3' to 1e-3)."""
    tp = _field_types()[key]
    if value is None:
        if type(None) in typing.get_args(tp) or tp is Any:
            return None
        raise RecipeError(f"recipe key '{key}' ({where}) may not be null")
    allowed = _base_types(tp)
    if not allowed or isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
        return value
    try:
        if float in allowed and isinstance(value, int | str) and not isinstance(value, bool):
            return float(value)
        if int in allowed and isinstance(value, str):
            return int(value)
        if bool in allowed and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        if str in allowed and isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if list in allowed and isinstance(value, tuple):
            return list(value)
    except ValueError:
        pass
    names = " or ".join(t.__name__ for t in allowed)
    raise RecipeError(f"recipe key '{key}' ({where}) must be {names}, got {value!r}")


def _parse_value(text: str) -> Any:
    """YAML-parse one override value ('8' -> 8, '[1,2]' -> list, 'null' -> None)."""
    if text == "":
        return ""
    where = f"override value {text[:40]!r}"
    if len(text) > MAX_RECIPE_BYTES:
        return load_yaml_bounded(text, where)  # raises the size error
    try:
        return _compose_bounded(text)
    except yaml.YAMLError:
        return text
    except _LimitExceeded as exc:
        raise RecipeError(f"{where}: {exc}") from None


def apply_overrides(
    values: dict[str, Any],
    overrides: list[str] | dict[str, Any],
    where: str = "command line",
    known_keys: list[str] | None = None,
) -> dict:
    """Apply ``key=value`` strings (dotted keys reach into mappings) to a recipe dict (not changed in place).

    ``known_keys`` are the valid top-level keys (default: the Recipe's); a recipe that validates its
    own sections afterwards (the dense tasks' recipes) passes its section names.
    """
    valid = valid_keys() if known_keys is None else list(known_keys)
    items: list[tuple[str, Any]]
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            if "=" not in text:
                raise RecipeError(f"override {text!r} is not of the form key=value")
            key, _, raw = text.partition("=")
            items.append((key.strip(), _parse_value(raw.strip())))
    out = dict(values)
    for key, value in items:
        top, _, sub = key.partition(".")
        if top not in valid:
            raise _unknown_key_error(top, valid, where)
        if sub:
            current = out.get(top)
            if current is None:
                current = {}
            if not isinstance(current, dict):
                raise RecipeError(f"recipe key '{top}' is not a mapping; cannot set '{key}' ({where})")
            current = dict(current)
            _set_dotted(current, sub, value)
            out[top] = current
        else:
            out[top] = value
    return out


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        child = dict(target.get(head) or {})
        _set_dotted(child, rest, value)
        target[head] = child
    else:
        target[head] = value


def is_recipe_path(name: str | os.PathLike) -> bool:
    """True when a recipe argument names a file (a path separator, or a .yaml/.yml suffix), not a bundled
    recipe's bare name (``quickstart``, ``transfer``)."""
    text = os.fspath(name)
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return isinstance(name, os.PathLike) or any(s in text for s in seps) or text.endswith((".yaml", ".yml"))


def bundled_recipes() -> list[str]:
    """Bare names of the bundled recipes (``recipes/*.yaml`` in a checkout, plus the packaged quickstart)."""
    names = {p.stem for p in ASSETS_DIR.glob("*.yaml")}
    if RECIPES_DIR.is_dir():
        names |= {p.stem for p in RECIPES_DIR.glob("*.yaml")}
    return sorted(names)


def resolve_recipe_path(name: str | os.PathLike) -> Path:
    """The recipe file a recipe argument names: a path (it must exist: no fallback to a bundled recipe of
    the same file name), or the bare name of a bundled recipe (``quickstart`` -> recipes/quickstart.yaml)."""
    if is_recipe_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            what = "is a directory, not a recipe file" if path.is_dir() else "not found"
            hint = ""
            if path.stem in bundled_recipes():
                hint = f" (the bundled recipe of that name is reached by its bare name: '{path.stem}')"
            raise FileNotFoundError(f"recipe file {what}: {name}{hint}")
        return path
    text = os.fspath(name)
    for candidate in (RECIPES_DIR / f"{text}.yaml", ASSETS_DIR / f"{text}.yaml"):
        if candidate.is_file():
            return candidate
    names = bundled_recipes()
    hint = did_you_mean(text, names)
    raise FileNotFoundError(
        f"no bundled recipe named '{text}'{hint} (bundled: {', '.join(names)}); a recipe file is named by "
        "a path with a folder or a .yaml suffix (./my_recipe.yaml)"
    )


def read_recipe_file(source: str | os.PathLike, error: type[RecipeError] = RecipeError) -> tuple[dict, str]:
    """(the YAML mapping, the path as text) of a recipe file found by ``resolve_recipe_path``."""
    path = resolve_recipe_path(source)
    try:  # bounded: a FIFO, /dev/zero or a giant named recipe.yaml is refused unread
        text = read_bounded(path, MAX_RECIPE_BYTES).decode()
    except FileTooLargeError:
        raise error(
            f"{path}: {path.stat().st_size} bytes, more than the recipe limit {MAX_RECIPE_BYTES} "
            "(adaptor_peft.limits.MAX_RECIPE_BYTES): not a recipe; check the file"
        ) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise error(f"{path}: cannot be read as text ({exc})") from None
    data = load_yaml_bounded(text, str(path), error) or {}
    if not isinstance(data, dict):
        raise error(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
    return data, str(path)


def load_recipe(
    source: str | os.PathLike | dict | None = None, overrides: list[str] | dict | None = None
) -> Recipe:
    """Build a validated Recipe from a YAML file (or a dict) plus ``key=value`` overrides."""
    if source is None:
        data: dict = {}
        where = "defaults"
    elif isinstance(source, dict):
        data, where = dict(source), "dict"
    else:
        data, where = read_recipe_file(source)
    valid = valid_keys()
    for key in data:
        if key not in valid:
            raise _unknown_key_error(str(key), valid, where)
    data = apply_overrides(data, overrides or [])
    kwargs = {key: _coerce(key, value, where) for key, value in data.items()}
    return Recipe(**kwargs).validate()


@dataclass(frozen=True)
class SectionSchema:
    """The shape of a recipe made of sections: the keys each section allows (None: a plain value)."""

    sections: dict[str, frozenset[str] | None]
    required: tuple[str, ...] = ()
    error: type[RecipeError] = RecipeError
    #: value checks run after the keys, the variant and the overrides: (recipe, where) -> None or raise
    check: Callable[[dict[str, Any], str], None] | None = None


def _check_sections(recipe: dict[str, Any], schema: SectionSchema, where: str) -> None:
    for key, value in recipe.items():
        if key not in schema.sections:
            raise schema.error(f"{where}: unknown section '{key}'{did_you_mean(key, list(schema.sections))}")
        allowed = schema.sections[key]
        if allowed is not None and value is not None:
            if not isinstance(value, dict):
                raise schema.error(f"{where}: section '{key}' must be a mapping, got {type(value).__name__}")
            for sub in value:
                if sub not in allowed:
                    raise schema.error(
                        f"{where}: unknown key '{key}.{sub}'{did_you_mean(sub, sorted(allowed))}"
                    )


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` by section (a model's ``kwargs`` are replaced whole)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_sectioned(
    source: str | os.PathLike | dict[str, Any], schema: SectionSchema, variant: str | None
) -> dict[str, Any]:
    if isinstance(source, dict):
        recipe, where = copy.deepcopy(source), "recipe dict"
    else:
        recipe, where = read_recipe_file(source, schema.error)
    _check_sections(recipe, schema, where)
    variants = recipe.pop("variants", None) or {}
    for name, over in variants.items():
        _check_sections(over, schema, f"{where} (variant '{name}')")
    if variant is not None:
        if variant not in variants:
            raise schema.error(f"{where}: unknown variant '{variant}'; the recipe has {sorted(variants)}")
        recipe = _merge(recipe, variants[variant])
        recipe["name"] = f"{recipe['name']}_{variant}"
    for key in schema.required:
        if key not in recipe:
            raise schema.error(f"{where}: missing section '{key}'")
    if schema.check is not None:
        schema.check(recipe, where)
    return recipe


def load_sectioned_recipe(
    source: str | os.PathLike | dict[str, Any],
    schema: SectionSchema,
    variant: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A recipe of sections (path, bare name in recipes/, or dict), its ``variants:`` entry merged,
    ``section.key=value`` overrides applied; checked against ``schema`` before and after the overrides."""
    recipe = _read_sectioned(source, schema, variant)
    if overrides:
        recipe = _read_sectioned(
            apply_overrides(recipe, overrides, known_keys=list(schema.sections)), schema, None
        )
    return recipe


def resolve_path(path: str | os.PathLike | None) -> Path | None:
    """Expand the ``asset:`` prefix to the package's assets folder; other paths are returned as is."""
    if path is None:
        return None
    text = str(path)
    if text.startswith(ASSET_PREFIX):
        return ASSETS_DIR / text[len(ASSET_PREFIX) :]
    return Path(text).expanduser()
