"""Loading weights into the models: released checkpoints, the training initialisation, torchvision's ImageNet weights.

* :func:`load_state_dict_from` reads a local file or an http(s)/file URL (URLs go through the torch.hub cache with
  the hash check that the released files' ``-<hash>`` suffix allows), always with ``weights_only=True``.
* :func:`restore_init` is the original training script's initialisation rule (``--restore-from``): strip the first
  dotted component of every key (``Scale.``) and skip ``layer5.*`` when ``num_classes == 19``.
* :func:`load_checkpoint` is a strict load (only a missing ``num_batches_tracked`` is tolerated, as in checkpoints
  saved by PyTorch < 0.4.1) that raises :class:`CheckpointMismatchError` with the missing/unexpected keys and a hint.
* :func:`torchvision_init` initialises the backbone from torchvision's ImageNet ResNet-101 or VGG-16 instead.
* :func:`restore_segmentation_weights` is the training script's whole ``--restore-from`` rule (init file, trained
  checkpoint, torchvision, none, VGG-16), built from the above.

The only module that reads weight files: the models receive state_dicts.

Library code: raises clear exceptions, logs through ``logging``, never prints.
"""
from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from model.deeplab_vgg import DeeplabVGG, vgg16_to_deeplab_features
from utils.distributed import unwrap

logger = logging.getLogger(__name__)

__all__ = [
    "RESTORE_FROM_INIT",
    "RESTORE_FROM_MULTI",
    "RESTORE_FROM_VGG",
    "RESTORE_FROM_ORACLE",
    "RELEASED_WEIGHTS",
    "CheckpointMismatchError",
    "RestoreReport",
    "is_none_restore",
    "torchvision_restore_weights",
    "is_url",
    "load_state_dict_from",
    "restore_init",
    "load_checkpoint",
    "guess_model_from_keys",
    "torchvision_init",
    "restore_segmentation_weights",
    "load_weights_file",
]

#: ImageNet + MS-COCO DeepLab-v2 ResNet-101 (keys ``Scale.*``): the original training initialisation.
RESTORE_FROM_INIT = "http://vllab.ucmerced.edu/ytsai/CVPR18/DeepLab_resnet_pretrained_init-f81d91e8.pth"
#: GTA5 -> Cityscapes, multi-level ResNet-101 (DeeplabMulti).
RESTORE_FROM_MULTI = "http://vllab.ucmerced.edu/ytsai/CVPR18/GTA2Cityscapes_multi-ed35151c.pth"
#: GTA5 -> Cityscapes, VGG-16 (DeeplabVGG).
RESTORE_FROM_VGG = "http://vllab.ucmerced.edu/ytsai/CVPR18/GTA2Cityscapes_vgg-ac4ac9f6.pth"
#: Cityscapes-trained single-level ResNet-101 (Oracle, Res_Deeplab).
RESTORE_FROM_ORACLE = "http://vllab1.ucmerced.edu/~whung/adaptSeg/cityscapes_oracle-b7b9934.pth"

#: ``--model`` name -> released weights for the evaluation script's default.
RELEASED_WEIGHTS: dict[str, str] = {
    "DeeplabMulti": RESTORE_FROM_MULTI,
    "DeeplabVGG": RESTORE_FROM_VGG,
    "Oracle": RESTORE_FROM_ORACLE,
}

_URL_PREFIXES = ("http://", "https://", "file://")
_NBT = "num_batches_tracked"
_SHOW = 5  # keys shown per list in error messages


class CheckpointMismatchError(ValueError):
    """A state_dict does not fit the model. Attributes hold the full lists; the message shows a few of each."""

    def __init__(
        self,
        message: str,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        shape_mismatches: Iterable[str] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatches = list(shape_mismatches)
        self.hint = hint


@dataclass
class RestoreReport:
    """What an initialisation copied: ``copied`` (model keys set from the file), ``skipped`` (file keys left out
    on purpose, e.g. ``layer5.*`` by the 19-class rule or torchvision's ``fc.*``), ``kept_init`` (model keys the
    file lacks, which keep the model's own initialisation)."""

    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept_init: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kept = [k for k in self.kept_init if not k.endswith(_NBT)]
        return (
            f"copied {len(self.copied)} tensors, skipped {len(self.skipped)}"
            f"{_examples(self.skipped)}, {len(kept)} keep their initialisation{_examples(kept)}"
        )


# ---- reading files ----------------------------------------------------------------------------------------------


def is_none_restore(value: Any) -> bool:
    """True when ``--restore-from`` means "no weights": None, "", "none", "null" (any case, surrounding spaces)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


#: ``--restore-from torchvision`` (or ``torchvision:<WEIGHTS>``, e.g. ``torchvision:IMAGENET1K_V2``).
TORCHVISION_RESTORE = "torchvision"


def torchvision_restore_weights(value: Any) -> str | None:
    """The torchvision weights name that ``--restore-from`` asks for, or None when it names a file or URL.

    ``"torchvision"`` -> ``"IMAGENET1K_V1"`` (the weights torchvision's own ``pretrained=True`` meant);
    ``"torchvision:IMAGENET1K_V2"`` -> ``"IMAGENET1K_V2"``. Case-insensitive prefix, surrounding spaces ignored;
    the name is checked against the model's weights enum by :func:`torchvision_init`.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    head, sep, name = text.partition(":")
    if head.lower() != TORCHVISION_RESTORE:
        return None
    if not sep:
        return "IMAGENET1K_V1"
    if not name.strip():
        raise ValueError(f"--restore-from {value!r}: expected 'torchvision' or 'torchvision:<WEIGHTS>', "
                         "e.g. torchvision:IMAGENET1K_V1")
    return name.strip().upper()


def is_url(value: str | Path) -> bool:
    """True for http://, https:// and file:// addresses (read through the torch.hub cache)."""
    return isinstance(value, str) and value.lower().startswith(_URL_PREFIXES)


def load_state_dict_from(
    path_or_url: str | Path,
    map_location: Any = "cpu",
    *,
    model_dir: str | Path | None = None,
    flag: str = "--restore-from",
    progress: bool = True,
    none_allowed: bool = False,
) -> dict[str, torch.Tensor]:
    """Read a state_dict (name -> tensor) from a local file or an http(s)/file URL.

    URLs download once into the torch.hub cache (``model_dir``, default ``$TORCH_HOME/hub/checkpoints``) through
    ``torch.hub.load_state_dict_from_url(check_hash=True)``: a file named ``name-<hex>.pth`` must have a SHA-256
    starting with ``<hex>`` (the released files are named that way). Everything loads with ``weights_only=True``.
    A file holding a dict with a ``state_dict`` or ``model`` entry (a resume file) yields that entry.

    ``none_allowed``: the caller accepts ``none`` for "no weights" (training does, evaluation does not), so the
    missing-file message offers it.

    Raises ``FileNotFoundError`` (missing file), ``ValueError`` (unreadable/corrupt file, hash mismatch, not a
    state_dict) or ``OSError`` (download failed); messages name the file or URL and ``flag``.
    """
    if is_url(path_or_url):
        url = str(path_or_url)
        filename = os.path.basename(urllib.parse.urlparse(url).path)
        cache_dir = Path(model_dir) if model_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
        cached = cache_dir / filename
        try:
            obj = torch.hub.load_state_dict_from_url(
                url,
                model_dir=str(cache_dir),
                map_location=map_location,
                check_hash=True,
                weights_only=True,
                file_name=filename,
                progress=progress,
            )
        except urllib.error.URLError as e:
            raise OSError(
                f"{flag} {url}: download failed ({e}); download the file by hand and pass its local path to {flag}"
            ) from e
        except RuntimeError as e:
            if "invalid hash value" in str(e):
                raise ValueError(
                    f"{flag} {url}: the downloaded file's SHA-256 does not start with the hash in its name ({e}); "
                    "the download is corrupt or the file is not the released one"
                ) from e
            raise _unreadable(cached, flag, e, cached=True) from e
        except Exception as e:  # noqa: BLE001 -- torch.load raises many types on a corrupt file
            raise _unreadable(cached, flag, e, cached=True) from e
        return _extract_state_dict(obj, f"{url} (cached as {cached})", flag)

    path = Path(path_or_url).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{flag} {path}: no such file; pass an existing .pth file"
            + (", an http(s) URL, or 'none'" if none_allowed else " or an http(s) URL")
        )
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a directory, expected a .pth checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch.load raises many types on a corrupt file
        raise _unreadable(path, flag, e) from e
    return _extract_state_dict(obj, str(path), flag)


def _unreadable(path: Path, flag: str, error: Exception, cached: bool = False) -> ValueError:
    extra = "; delete the cached file to download it again" if cached else ""
    text = str(error).strip()
    m = re.search(r"Unsupported global: [^\n]*", text)
    if m:
        reason = (
            f"it holds pickled Python objects, not a plain state_dict ({m.group(0).strip()}); save "
            "model.state_dict() instead of the model object"
        )
    elif "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0].strip()
        reason = f"unreadable pickle data: {detail[:200]}"
    else:
        first = text.splitlines()[0] if text else "empty file"
        reason = f"{type(error).__name__}: {first[:200]}{'...' if len(first) > 200 else ''}"
    return ValueError(
        f"{flag} {path}: cannot be read as a PyTorch checkpoint with weights_only=True, "
        f"the file is corrupt, truncated or not a checkpoint ({reason}){extra}"
    )


def _extract_state_dict(obj: Any, source: str, flag: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{flag} {source}: expected a state_dict (a dict of name -> tensor), got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"{flag} {source}: expected a state_dict (a dict of name -> tensor); {len(bad)} entries are not tensors"
            f"{_examples(bad)}"
        )
    return dict(obj)


# ---- guessing what a checkpoint is ------------------------------------------------------------------------------

_MODEL_NAME_OF_CLASS = {
    "DeeplabMulti": "DeeplabMulti",
    "Res_Deeplab": "Oracle",
    "DeeplabVGG": "DeeplabVGG",
    "FCDiscriminator": "FCDiscriminator",
}


def guess_model_from_keys(state_dict: Mapping[str, Any]) -> str | None:
    """Which layout a state_dict looks like: "init" (``Scale.`` prefix), "DeeplabVGG" (``features.``),
    "DeeplabMulti" (``layer6.``), "Oracle" (``layer5`` only, on 2048 channels), "FCDiscriminator"
    (``conv4`` + a single ``classifier`` conv), or None."""
    keys = list(state_dict)
    if any(k.startswith("Scale.") for k in keys):
        return "init"
    if any(k.startswith("features.") for k in keys):
        return "DeeplabVGG"
    if any(k.startswith("layer6.") for k in keys):
        return "DeeplabMulti"
    w = state_dict.get("layer5.conv2d_list.0.weight")
    if isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[1] == 2048:
        return "Oracle"
    if "conv4.weight" in state_dict and "classifier.weight" in state_dict:
        return "FCDiscriminator"
    return None


def _block_counts(keys: Iterable[str]) -> tuple[int, ...] | None:
    found: dict[int, set[str]] = {1: set(), 2: set(), 3: set(), 4: set()}
    for k in keys:
        m = re.match(r"layer([1-4])\.(\d+)\.", k)
        if m:
            found[int(m.group(1))].add(m.group(2))
    counts = tuple(len(found[i]) for i in (1, 2, 3, 4))
    return counts if all(counts) else None


def _num_classes_of(state_dict: Mapping[str, Any]) -> int | None:
    for key in ("layer6.conv2d_list.0.weight", "layer5.conv2d_list.0.weight", "classifier.conv2d_list.0.weight"):
        w = state_dict.get(key)
        if isinstance(w, torch.Tensor) and w.dim() == 4:
            return int(w.shape[0])
    return None


def _hint(model: nn.Module, model_name: str, state_dict: Mapping[str, Any]) -> str | None:
    guess = guess_model_from_keys(state_dict)
    canonical = "DeeplabMulti" if model_name == "DeepLab" else model_name
    if guess == "init":
        return (
            "this is an initialisation file (keys start with 'Scale.', like DeepLab_resnet_pretrained_init-"
            "f81d91e8.pth), not a trained model: use it with the training script's --restore-from"
        )
    if guess == "FCDiscriminator" and canonical != "FCDiscriminator":
        return "these look like discriminator weights (a *_D1.pth / *_D2.pth snapshot), not a segmentation model"
    if guess is not None and guess != canonical:
        return f"these look like {guess} weights; pass --model {guess}"
    hints = []
    ckpt_blocks = _block_counts(state_dict)
    model_blocks = _block_counts(model.state_dict())
    if ckpt_blocks and model_blocks and ckpt_blocks != model_blocks:
        hints.append(
            f"the checkpoint has ResNet blocks {','.join(map(str, ckpt_blocks))}, the model "
            f"{','.join(map(str, model_blocks))}: pass --resnet-layers {','.join(map(str, ckpt_blocks))}"
        )
    ckpt_classes = _num_classes_of(state_dict)
    model_classes = _num_classes_of(model.state_dict())
    if ckpt_classes is not None and model_classes is not None and ckpt_classes != model_classes:
        hints.append(f"the checkpoint predicts {ckpt_classes} classes, the model {model_classes}: "
                     f"pass --num-classes {ckpt_classes}")
    return "; ".join(hints) or None


def _examples(keys: list[str], n: int = _SHOW) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:n])
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return f" [{shown}{more}]"


def _mismatch_error(
    what: str,
    missing: list[str],
    unexpected: list[str],
    shapes: list[str],
    hint: str | None,
) -> CheckpointMismatchError:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys{_examples(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys{_examples(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches{_examples(shapes)}")
    message = f"{what}: " + "; ".join(parts)
    if hint:
        message += f". Hint: {hint}"
    return CheckpointMismatchError(message, missing, unexpected, shapes, hint)


def _model_name(model: nn.Module) -> str:
    return _MODEL_NAME_OF_CLASS.get(type(model).__name__, type(model).__name__)


def _shape_text(key: str, got: torch.Tensor, want: torch.Tensor) -> str:
    return f"{key}: checkpoint {tuple(got.shape)} vs model {tuple(want.shape)}"


# ---- loading ----------------------------------------------------------------------------------------------------


def restore_init(model: nn.Module, state_dict: Mapping[str, torch.Tensor], num_classes: int) -> RestoreReport:
    """The original training script's initialisation rule, for ``--restore-from`` at the start of training.

    Every key of ``state_dict`` loses its first dotted component (``Scale.layer1.0.conv1.weight`` ->
    ``layer1.0.conv1.weight``) and is copied into the model -- except, when ``num_classes == 19``, those that then
    start with ``layer5.`` (the init file's classifier predicts 21 PASCAL classes; in DeeplabMulti ``layer5`` is the
    auxiliary classifier, and both it and ``layer6`` keep their N(0, 0.01) init). Model keys the file lacks keep the
    model's own initialisation (logged). A stripped key the model does not have, or a shape that differs, raises
    :class:`CheckpointMismatchError` (the original crashed there too). Returns a :class:`RestoreReport`.
    """
    model = unwrap(model)
    own = model.state_dict()
    new_params = dict(own)
    report = RestoreReport()
    unexpected: list[str] = []
    shapes: list[str] = []
    for key, value in state_dict.items():
        parts = key.split(".", 1)
        stripped = parts[1] if len(parts) == 2 else ""
        if num_classes == 19 and stripped.startswith("layer5."):
            report.skipped.append(key)
            continue
        if stripped not in own:
            unexpected.append(f"{key} (-> {stripped!r})")
            continue
        if tuple(value.shape) != tuple(own[stripped].shape):
            shapes.append(_shape_text(key, value, own[stripped]))
            continue
        new_params[stripped] = value
        report.copied.append(stripped)
    if unexpected or shapes:
        hint = None
        if not any(k.startswith("Scale.") for k in state_dict):
            guess = guess_model_from_keys(state_dict)
            hint = (
                "the initialisation rule strips the first key component (an init file's keys start with 'Scale.'); "
                "these keys have no such prefix"
                + (f" and look like a trained {guess} checkpoint" if guess else "")
            )
        elif shapes:
            hint = (
                "with --num-classes other than 19 the init file's layer5 classifier is copied and must have the "
                "model's shape"
            )
        raise _mismatch_error(
            f"initialisation weights do not fit {_model_name(model)}", [], unexpected, shapes, hint
        )
    copied = set(report.copied)
    report.kept_init = [k for k in own if k not in copied]
    model.load_state_dict(new_params)
    logger.info("restore_init into %s: %s", _model_name(model), report.summary())
    return report


def load_checkpoint(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    model_name: str | None = None,
    source: str | None = None,
) -> list[str]:
    """Load a trained checkpoint strictly: every key must exist with the same shape, in both directions.

    Only missing ``*.num_batches_tracked`` entries are tolerated (checkpoints saved before PyTorch 0.4.1, like the
    released ones, lack them; the model keeps its own counters, which evaluation does not use). A ``module.``
    prefix on every key (a DataParallel/DDP save) is stripped. Anything else raises
    :class:`CheckpointMismatchError` listing missing/unexpected keys and shape mismatches, with a hint when the
    keys look like another model (``model_name`` is the user's ``--model``; default from the model's class).
    Returns the tolerated missing keys.
    """
    model = unwrap(model)
    model_name = model_name or _model_name(model)
    own = model.state_dict()
    state = dict(state_dict)
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}
        logger.info("load_checkpoint: stripped the 'module.' prefix (a DataParallel/DDP save)")
    missing = [k for k in own if k not in state]
    tolerated = [k for k in missing if k.rsplit(".", 1)[-1] == _NBT]
    missing = [k for k in missing if k.rsplit(".", 1)[-1] != _NBT]
    unexpected = [k for k in state if k not in own]
    shapes = [_shape_text(k, v, own[k]) for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise _mismatch_error(
            f"{source or 'checkpoint'} does not fit --model {model_name}",
            missing,
            unexpected,
            shapes,
            _hint(model, model_name, state),
        )
    result = model.load_state_dict(state, strict=False)
    # (BatchNorm fills in an absent num_batches_tracked itself, so only a subset of ``tolerated`` may show here.)
    assert not result.unexpected_keys and set(result.missing_keys) <= set(tolerated), result
    if tolerated:
        logger.info(
            "load_checkpoint: %d num_batches_tracked entries absent (an old checkpoint); kept the model's own",
            len(tolerated),
        )
    return tolerated


def torchvision_init(
    model: nn.Module,
    arch: str | None = None,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    weights: str = "IMAGENET1K_V1",
    model_dir: str | Path | None = None,
) -> RestoreReport:
    """Initialise the backbone from torchvision's ImageNet weights (an alternative to ``RESTORE_FROM_INIT``).

    ``arch``: "resnet101" (DeeplabMulti, Res_Deeplab: every key matches ours except torchvision's ``fc.*``, which
    is skipped; the classifiers keep their init) or "vgg16" (DeeplabVGG: ``features`` re-indexed around the dropped
    pools, torchvision's fully-connected ``classifier.*`` skipped, fc6/fc7/classifier keep their init); default from
    the model's class. ``state_dict``: use these torchvision-layout weights instead of downloading
    ``ResNet101_Weights[weights]`` / ``VGG16_Weights[weights]`` (through the hub cache, hash-checked).

    NOTE: the architectures differ from the ones torchvision's weights were trained in (stride on the 3x3 conv vs
    on the 1x1 here, no ceil-mode pooling, no dilation) and torchvision expects RGB input scaled to [0, 1] and
    normalised by its mean/std, whereas the scripts feed BGR minus the Caffe mean: results will differ from the
    paper's initialisation. Raises :class:`CheckpointMismatchError` when the weights do not fit the backbone
    (e.g. a ``--resnet-layers`` variant).
    """
    model = unwrap(model)
    if arch is None:
        arch = "vgg16" if isinstance(model, DeeplabVGG) else "resnet101"
    if arch not in ("resnet101", "vgg16"):
        raise ValueError(f"torchvision_init: arch must be 'resnet101' or 'vgg16', got {arch!r}")
    if state_dict is None:
        from torchvision import models

        enum = models.ResNet101_Weights if arch == "resnet101" else models.VGG16_Weights
        try:
            url = enum[weights].url
        except KeyError:
            raise ValueError(
                f"torchvision_init: unknown {enum.__name__} {weights!r}; choose one of {[w.name for w in enum]}"
            ) from None
        state_dict = load_state_dict_from(url, model_dir=model_dir, flag=f"torchvision {enum.__name__}.{weights}")
    own = model.state_dict()
    report = RestoreReport()
    if arch == "vgg16":
        mapped = vgg16_to_deeplab_features(state_dict, source=f"torchvision {arch} weights")
        report.skipped = [k for k in state_dict if k.startswith("classifier.")]
        backbone_keys = [k for k in own if k.startswith("features.") and k in mapped]
    else:
        mapped = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        report.skipped = [k for k in state_dict if k.startswith("fc.")]
        backbone_keys = [k for k in own if not k.startswith(("layer5.", "layer6."))]
    missing = [k for k in backbone_keys if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    shapes = [
        _shape_text(k, v, own[k]) for k, v in mapped.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        hint = None
        ckpt_blocks, model_blocks = _block_counts(mapped), _block_counts(own)
        if ckpt_blocks and model_blocks and ckpt_blocks != model_blocks:
            hint = (f"torchvision's {arch} has blocks {','.join(map(str, ckpt_blocks))}, the model "
                    f"{','.join(map(str, model_blocks))} (--resnet-layers)")
        raise _mismatch_error(
            f"torchvision {arch} weights do not fit {_model_name(model)}", missing, unexpected, shapes, hint
        )
    model.load_state_dict(mapped, strict=False)
    report.copied = list(mapped)
    report.kept_init = [k for k in own if k not in mapped]
    logger.warning(
        "%s initialised from torchvision's ImageNet %s (%s). Architecture and input conventions differ from the "
        "original's Caffe initialisation (see the README): results will differ from the paper's.",
        _model_name(model), arch, report.summary(),
    )
    return report


# ---- the training script's --restore-from rules ----------------------------------------------------------------


def _drop_classifier_keys(state_dict: dict[str, torch.Tensor], model_name: str) -> dict[str, torch.Tensor]:
    """``--not-restore-last``: leave out the last (classifier) layers of the file."""
    if model_name == "DeeplabVGG":
        return {k: v for k, v in state_dict.items() if "classifier" not in k.split(".")[:2]}
    return {k: v for k, v in state_dict.items() if not {"layer5", "layer6"} & set(k.split(".")[:2])}


def restore_segmentation_weights(model: nn.Module, restore_from: str, model_name: str, num_classes: int,
                                 not_restore_last: bool = False) -> None:
    """Initialise the segmentation network for training from ``--restore-from``, by the original's rule.

    * ``none``: the model's own initialisation.
    * ``torchvision[:WEIGHTS]``: torchvision's ImageNet ResNet-101 / VGG-16 backbone through the hub cache
      (:func:`torchvision_init`; not the paper's initialisation, results differ).
    * DeepLab (``model_name`` DeepLab/DeeplabMulti, or Oracle, the single-level ``Res_Deeplab``): an
      initialisation file (``Scale.``-prefixed keys, the ImageNet+COCO DeepLab-v2 of the original) goes through
      :func:`restore_init` (strip ``Scale.``, skip ``layer5`` for 19 classes); a trained state_dict of the same
      model (e.g. a ``GTA5_<i>.pth`` snapshot) loads strictly instead (the original would crash on it).
    * DeeplabVGG (the original never trained it): a torchvision-layout VGG-16 state_dict initialises ``features``
      (like the original constructor's ``vgg16_caffe_path``); a DeeplabVGG checkpoint (e.g. the released
      GTA2Cityscapes_vgg) loads strictly.

    ``not_restore_last``: the classifiers (layer5/layer6, VGG's classifier) keep the model's own initialisation.
    Raises ``CheckpointMismatchError``/``FileNotFoundError``/``ValueError``/``OSError`` with the file named.
    """
    if is_none_restore(restore_from):
        logger.info("--restore-from %s: starting from the model's own initialisation", restore_from)
        return
    tv_weights = torchvision_restore_weights(restore_from)
    if tv_weights is not None:  # not the paper's initialisation: torchvision_init warns that results will differ
        torchvision_init(unwrap(model), weights=tv_weights)
        return
    state_dict = load_state_dict_from(restore_from, none_allowed=True)
    source = f"--restore-from {restore_from}"
    vgg = model_name == "DeeplabVGG"
    trained = guess_model_from_keys(state_dict) == {"DeeplabVGG": "DeeplabVGG", "Oracle": "Oracle"}.get(
        model_name, "DeeplabMulti")
    if vgg:
        w = state_dict.get("classifier.0.weight")
        if isinstance(w, torch.Tensor) and w.dim() == 2:  # torchvision VGG-16: its FC head is never used
            unwrap(model).load_state_dict(vgg16_to_deeplab_features(state_dict, source=source), strict=False)
            logger.info("DeeplabVGG: VGG-16 features initialised from %s (fc6, fc7, classifier keep their init)",
                        restore_from)
            return
    if not_restore_last:
        before = len(state_dict)
        state_dict = _drop_classifier_keys(state_dict, model_name)
        logger.info("--not-restore-last: %d classifier tensors of %s not restored", before - len(state_dict),
                    restore_from)
    if not vgg and not trained:
        restore_init(model, state_dict, num_classes)  # the original's rule (Scale.-prefixed init file)
        return
    if not_restore_last:  # a trained checkpoint of this very model: keep the model's own classifiers
        own = unwrap(model).state_dict()
        heads = ("classifier.",) if vgg else ("layer5.", "layer6.")
        state_dict = {**{k: v for k, v in own.items() if k.startswith(heads)}, **state_dict}
    load_checkpoint(model, state_dict, model_name=model_name, source=source)


def load_weights_file(model: nn.Module, path: str, flag: str, model_name: str | None = None) -> None:
    """Read ``path`` (file or URL) and load it strictly into ``model`` (:func:`load_checkpoint`); errors name
    ``flag`` and ``path``."""
    load_checkpoint(model, load_state_dict_from(path, flag=flag), model_name=model_name, source=f"{flag} {path}")
