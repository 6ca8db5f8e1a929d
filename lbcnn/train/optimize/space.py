"""The search space: architecture, head and input choices, narrowable per option.

Everything here is cheap and data-free except ``input_shape``: feasibility
(feature count, memory plan, ``max_kbits``) is decided before a trial costs
anything, so the study never spends a fit on a model that cannot be kept.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

from ...binary.pooling import pooled_size
from ...errors import ConfigError

FLOAT_BITS = 32  # ``bits`` = 32 means a float32 head (``lbcnn info`` counts 32 bits/weight)
HEAD_BITS = (FLOAT_BITS, 8, 6, 5, 4, 3)
DEFAULT_MULTIPLIERS = ((5, 10, 20, 30, 40, 60, 80), (1, 2, 4, 8), (1, 2, 4))


@dataclass(frozen=True)
class Config:
    """One point of the space: what a trial builds and what a front member is."""

    filters: tuple[int, ...]
    nl: int
    C: float | None  # None: solved per body on validation (the trial records the C it chose)
    bits: int
    color: str = "gray"  # "gray" (one-channel data), "rgb" or "y" (BT.601 luma)

    @property
    def head(self) -> str:
        return "float32" if self.bits == FLOAT_BITS else f"int{self.bits}"

    def label(self) -> str:
        c = "" if self.color == "gray" else f" {self.color}"
        C = "" if self.C is None else f" C={self.C:.2g}"
        return f"{','.join(map(str, self.filters))} nl{self.nl} {self.head}{C}{c}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["filters"] = list(self.filters)
        return d

    @classmethod
    def from_params(cls, params: dict, channels: int) -> "Config":
        layers = int(params["layers"])
        filters = tuple(int(params[f"nf{i + 1}"]) for i in range(layers))
        color = params.get("color", "rgb") if channels == 3 else "gray"
        C = float(params["C"]) if "C" in params else None
        return cls(filters, int(params["nl"]), C, int(params["bits"]), color)


def features(input_shape, filters, color: str = "gray") -> int:
    h, w, c = input_shape
    if color == "y":
        c = 1
    for nf in filters:
        h, w, c = pooled_size(h), pooled_size(w), c * nf
    return h * w * c


@dataclass
class SearchSpace:
    """Choices per parameter. ``multipliers[i]`` are layer ``i+1``'s depth
    multipliers; ``C`` is the (low, high) range each body chooses its C from on
    validation (``heads.ridge_path.c_grid``: half-decade steps; low == high fixes it):
    C is solved per body, not sampled."""

    layers: tuple[int, ...] = (1, 2, 3)
    multipliers: tuple[tuple[int, ...], ...] = DEFAULT_MULTIPLIERS
    nl: tuple[int, ...] = (1, 2)
    C: tuple[float, float] = (1e-5, 1.0)
    bits: tuple[int, ...] = HEAD_BITS
    color: tuple[str, ...] = ("rgb", "y")
    max_features: int = 16384
    _checked: bool = field(default=False, repr=False, compare=False)

    def check(self) -> "SearchSpace":
        def nonempty(name, vals):
            if not vals:
                raise ConfigError(f"the search space allows no {name}")
        nonempty("layer count", self.layers)
        if any(n not in (1, 2, 3) for n in self.layers):
            raise ConfigError(f"layers must be 1, 2 or 3, got {list(self.layers)}")
        if len(self.multipliers) < max(self.layers):
            raise ConfigError(f"{max(self.layers)} layers need depth multipliers for each layer")
        for i in range(max(self.layers)):
            nonempty(f"depth multiplier for layer {i + 1}", self.multipliers[i])
            if any(int(m) < 1 for m in self.multipliers[i]):
                raise ConfigError(f"depth multipliers must be >= 1, got {list(self.multipliers[i])}")
        nonempty("nl", self.nl)
        if any(int(n) < 1 for n in self.nl):
            raise ConfigError(f"nl must be >= 1, got {list(self.nl)}")
        lo, hi = self.C
        if not (0 < lo <= hi) or not math.isfinite(hi):
            raise ConfigError(f"C range must be 0 < low <= high, got {lo:g},{hi:g}")
        nonempty("head bits", self.bits)
        for b in self.bits:
            if b != FLOAT_BITS and not 2 <= b <= 16:
                raise ConfigError(f"head bits must be float32 (32) or 2..16, got {b}")
        nonempty("colour mode", self.color)
        if any(c not in ("rgb", "y") for c in self.color):
            raise ConfigError(f"colour modes are rgb and y, got {list(self.color)}")
        if self.max_features < 1:
            raise ConfigError(f"max features must be positive, got {self.max_features}")
        self._checked = True
        return self

    def c_grid(self):
        from ...heads.ridge_path import c_grid
        return c_grid(float(self.C[0]), float(self.C[1]))

    def colors(self, channels: int) -> tuple[str, ...]:
        return tuple(self.color) if channels == 3 else ("gray",)

    def architectures(self):
        for n in sorted(set(self.layers)):
            for filters in itertools.product(*[sorted(set(self.multipliers[i])) for i in range(n)]):
                yield tuple(int(f) for f in filters)

    def enumerate(self, input_shape, feasible=None):
        """Every configuration that ``feasible`` accepts."""
        for filters in self.architectures():
            for color in self.colors(input_shape[2]):
                if features(input_shape, filters, color) > self.max_features:
                    continue
                for nl in sorted(set(self.nl)):
                    for bits in sorted(set(self.bits)):
                        cfg = Config(filters, int(nl), None, int(bits), color)
                        if feasible is None or feasible(cfg):
                            yield cfg

    def suggest(self, trial, channels: int) -> dict:
        """Define-by-run sampling; returns the trial's params."""
        layers = trial.suggest_categorical("layers", sorted(set(self.layers)))
        for i in range(layers):
            trial.suggest_categorical(f"nf{i + 1}", sorted(set(self.multipliers[i])))
        trial.suggest_categorical("nl", sorted(set(self.nl)))
        trial.suggest_categorical("bits", sorted(set(self.bits), reverse=True))
        if channels == 3:
            trial.suggest_categorical("color", list(self.color))
        return dict(trial.params)

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "multipliers": [list(m) for m in self.multipliers],
                "nl": list(self.nl), "C": list(self.C), "C_mode": "per-body validation sweep",
                "bits": list(self.bits),
                "color": list(self.color), "max_features": self.max_features}
