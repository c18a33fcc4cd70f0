"""Masking mixtures: which modalities a sample draws its input and target tokens from, and how many.

A :class:`Mixture` is a mixture of Dirichlet distributions over modalities
(OFFICIAL-4M-SPEC §4.2, §4.6): component ``k`` has one input alpha and one target alpha per modality,
a sequence modality also has a ``keep`` scheme per component, and the components are drawn with
``sampling_weights`` (uniformly when absent). A :class:`MaskingConfig` adds the token budgets.

YAML formats accepted by :meth:`MaskingConfig.from_yaml` (loaded with ``yaml.safe_load``):

- the official alphas files unchanged, flat (``<modality>: {input_alphas, target_alphas, keep}``) or
  nested (``sampling_weights: [...]`` and ``alphas_mixture: {<modality>: ...}``);
- our own format: the nested official one plus ``input_tokens`` / ``target_tokens`` (an int or
  ``[min, max]``, inclusive) and an optional ``modalities`` section that registers modalities the
  registry does not know yet (fields of :class:`open4m.modalities.Modality`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import yaml

from open4m import modalities

KEEP_SCHEMES = ("random", "all", "binary")
_RESERVED_KEYS = ("sampling_weights", "alphas_mixture", "input_tokens", "target_tokens", "modalities")
_MODALITY_KEYS = ("input_alphas", "target_alphas", "keep")
ALPHA_EPS = 1e-9  # alphas are clamped to this before sampling, so alpha 0 means "(almost) never" (official)


@dataclass(frozen=True, eq=False)
class Mixture:
    """A mixture of Dirichlet distributions over modalities.

    Attributes:
        names: modality names, sorted (the official order).
        input_alphas: ``(K, M)`` float array, component ``k``'s input concentration per modality.
        target_alphas: ``(K, M)`` float array, the same for targets.
        keep: sequence-like modality name -> ``K`` keep schemes (``random`` / ``all`` / ``binary``).
        sampling_weights: ``(K,)`` probabilities of the components (normalised).
    """

    names: tuple[str, ...]
    input_alphas: np.ndarray
    target_alphas: np.ndarray
    keep: Mapping[str, tuple[str, ...]]
    sampling_weights: np.ndarray

    @property
    def num_components(self) -> int:
        return self.input_alphas.shape[0]

    def expected_share(self, which: str = "input") -> np.ndarray:
        """``(M,)`` mean Dirichlet share of the budget per modality, ``sum_k w_k alpha_k / sum(alpha_k)``.

        It is the exact mean budget fraction when every component's non-zero alphas are equal and no
        budget is clamped at ``max_tokens``; otherwise the remainder rule shifts it slightly.
        """
        alphas = self.input_alphas if which == "input" else self.target_alphas
        alphas = np.maximum(alphas, ALPHA_EPS)
        return self.sampling_weights @ (alphas / alphas.sum(axis=1, keepdims=True))

    @classmethod
    def from_dict(cls, mixture: Mapping, sampling_weights: Sequence[float] | None = None,
                  source: str = "mixture") -> Mixture:
        """Build from ``{modality: {"input_alphas": [...], "target_alphas": [...], "keep": [...]}}``."""
        if not isinstance(mixture, Mapping) or not mixture:
            raise ValueError(f"{source}: expected a mapping of modality names to alphas, got {mixture!r}")
        names = tuple(sorted(mixture))
        num_components = None
        inputs, targets, keep = [], [], {}
        for name in names:
            info = _modality(name, source)
            entry = mixture[name]
            if not isinstance(entry, Mapping):
                raise ValueError(f"{source}: modality {name!r} needs a mapping with input_alphas/target_alphas")
            unknown = set(entry) - set(_MODALITY_KEYS)
            if unknown:
                raise ValueError(f"{source}: modality {name!r} has unknown keys {sorted(unknown)}; "
                                 f"allowed: {list(_MODALITY_KEYS)}")
            for key in ("input_alphas", "target_alphas"):
                values = _alphas(entry.get(key), f"{source}: {name}.{key}")
                if num_components is None:
                    num_components = len(values)
                elif len(values) != num_components:
                    raise ValueError(f"{source}: {name}.{key} has {len(values)} values but the mixture has "
                                     f"{num_components} components (set by {names[0]}.input_alphas)")
                (inputs if key == "input_alphas" else targets).append(values)
            if "keep" in entry:
                if not info.is_sequence_like:
                    raise ValueError(f"{source}: {name}.keep given, but {name!r} is {info.kind}; "
                                     "keep schemes apply to sequences only")
                schemes = entry["keep"]
                if not isinstance(schemes, list) or len(schemes) != num_components:
                    raise ValueError(f"{source}: {name}.keep must be a list of {num_components} schemes, "
                                     f"got {schemes!r}")
                bad = [s for s in schemes if s not in KEEP_SCHEMES]
                if bad:
                    raise ValueError(f"{source}: {name}.keep has unknown schemes {bad}; allowed: {list(KEEP_SCHEMES)}")
                keep[name] = tuple(schemes)
            elif info.is_sequence_like:
                keep[name] = ("random",) * num_components
        weights = _sampling_weights(sampling_weights, num_components, source)
        return cls(names, np.array(inputs, float).T.copy(), np.array(targets, float).T.copy(), keep, weights)

    def to_dict(self) -> dict:
        """``{"sampling_weights": [...], "alphas_mixture": {...}}``: the nested official format, YAML-ready."""
        alphas = {}
        for m, name in enumerate(self.names):
            alphas[name] = {"input_alphas": self.input_alphas[:, m].tolist(),
                            "target_alphas": self.target_alphas[:, m].tolist()}
            if name in self.keep:
                alphas[name]["keep"] = list(self.keep[name])
        return {"sampling_weights": self.sampling_weights.tolist(), "alphas_mixture": alphas}

    @classmethod
    def single(cls, input_alphas: Mapping[str, float], target_alphas: Mapping[str, float]) -> Mixture:
        """One component: ``input_alphas`` for the input domains, ``target_alphas`` for the targets (0 elsewhere)."""
        names = set(input_alphas) | set(target_alphas)
        return cls.from_dict({n: {"input_alphas": [float(input_alphas.get(n, 0.0))],
                                  "target_alphas": [float(target_alphas.get(n, 0.0))]} for n in names})


@dataclass(frozen=True)
class MaskingConfig:
    """A mixture plus the token budgets.

    Attributes:
        mixture: the :class:`Mixture`.
        input_tokens: ``(min, max)`` inclusive range of the total input budget per sample.
        target_tokens: ``(min, max)`` for the target budget, or ``None`` for "every non-input token"
            (images) and "no truncation" (sequences), as the official ``target_tokens_range=None``.
    """

    mixture: Mixture
    input_tokens: tuple[int, int]
    target_tokens: tuple[int, int] | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_tokens", _token_range(self.input_tokens, "input_tokens"))
        if self.target_tokens is not None:
            object.__setattr__(self, "target_tokens", _token_range(self.target_tokens, "target_tokens"))

    def to_dict(self) -> dict:
        """Our YAML format (without a ``modalities`` section): ``MaskingConfig.from_dict(c.to_dict())`` is ``c``."""
        return {"input_tokens": list(self.input_tokens),
                "target_tokens": None if self.target_tokens is None else list(self.target_tokens),
                **self.mixture.to_dict()}

    @classmethod
    def from_dict(cls, config: Mapping, input_tokens=None, target_tokens=None, domains: Iterable[str] | None = None,
                  source: str = "masking config") -> MaskingConfig:
        """Build from a parsed YAML mapping in any accepted format; arguments override the file's budgets.

        ``domains`` keeps only those modalities of the file (the official loader takes a dataset's
        ``in_domains | out_domains`` from a shared alphas file); each must be in the file.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"{source}: expected a mapping at the top level, got {type(config).__name__}")
        if "modalities" in config:
            _register_declared(config["modalities"], source)
        if "alphas_mixture" in config:
            unknown = set(config) - set(_RESERVED_KEYS)
            if unknown:
                raise ValueError(f"{source}: unknown top-level keys {sorted(unknown)}; allowed: {list(_RESERVED_KEYS)}")
            alphas = config["alphas_mixture"]
        else:
            alphas = {k: v for k, v in config.items() if k not in _RESERVED_KEYS}
        if domains is not None and isinstance(alphas, Mapping):
            domains = list(dict.fromkeys(domains))
            absent = [d for d in domains if d not in alphas]
            if absent:
                raise ValueError(f"{source}: domains {absent} have no alphas in this file; it has {sorted(alphas)}")
            alphas = {d: alphas[d] for d in domains}
        mixture = Mixture.from_dict(alphas, config.get("sampling_weights"), source)
        input_tokens = config.get("input_tokens") if input_tokens is None else input_tokens
        target_tokens = config.get("target_tokens") if target_tokens is None else target_tokens
        if input_tokens is None:
            raise ValueError(f"{source}: no input_tokens; official alphas files carry none, so pass "
                             "input_tokens= (and target_tokens=), e.g. 128 for 4M-7 B")
        try:
            return cls(mixture, input_tokens, target_tokens)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, input_tokens=None, target_tokens=None,
                  domains: Iterable[str] | None = None) -> MaskingConfig:
        """Load a mixture YAML (official alphas file or ours); see the module docstring and :meth:`from_dict`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"masking config {str(path)!r} does not exist")
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from None
        return cls.from_dict(config, input_tokens, target_tokens, domains, source=str(path))


def _modality(name: str, source: str) -> modalities.Modality:
    try:
        return modalities.get(name)
    except KeyError as err:
        raise ValueError(f"{source}: {err.args[0]}") from None


def _alphas(values, where: str) -> list[float]:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where} must be a non-empty list of numbers, got {values!r}")
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be numbers, got {values!r}") from None
    if any(not math.isfinite(v) or v < 0 for v in out):
        raise ValueError(f"{where} must be finite and >= 0, got {values!r}")
    return out


def _sampling_weights(weights, num_components: int, source: str) -> np.ndarray:
    if weights is None:
        return np.full(num_components, 1.0 / num_components)
    w = np.asarray(_alphas(list(weights) if isinstance(weights, (list, tuple)) else weights,
                           f"{source}: sampling_weights"))
    if len(w) != num_components:
        raise ValueError(f"{source}: sampling_weights has {len(w)} values but the mixture has "
                         f"{num_components} components")
    if w.sum() <= 0:
        raise ValueError(f"{source}: sampling_weights must not all be 0")
    return w / w.sum()


def _token_range(value, what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else value
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair)):
        raise ValueError(f"{what} must be an int or [min, max] ints, got {value!r}")
    lo, hi = int(pair[0]), int(pair[1])
    if not 0 <= lo <= hi:
        raise ValueError(f"{what} must satisfy 0 <= min <= max, got {value!r}")
    return lo, hi


def _register_declared(declared, source: str) -> None:
    """Register the modalities a config declares (no-op for identical records; a clear error for conflicts)."""
    if not isinstance(declared, Mapping):
        raise ValueError(f"{source}: 'modalities' must map names to fields, got {declared!r}")
    allowed = {f.name for f in fields(modalities.Modality)} - {"name"}
    for name, spec in declared.items():
        if not isinstance(spec, Mapping) or "kind" not in spec:
            raise ValueError(f"{source}: modalities.{name} needs a mapping with at least 'kind'")
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"{source}: modalities.{name} has unknown fields {sorted(unknown)}; "
                             f"allowed: {sorted(allowed)}")
        try:
            modalities.register(modalities.Modality(name, **spec))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: modalities.{name}: {err}") from None
