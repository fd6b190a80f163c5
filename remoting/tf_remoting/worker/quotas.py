"""Quotas: the most a principal may hold on one worker (plain Python, no gRPC).

Four dimensions, each summed over what the principal holds on *this* worker:

- ``vram``: bytes of all its slices (a 4 GiB slice on each of 2 devices counts 8 GiB);
- ``compute``: percent of all its slices (two 50 % slices count 100 %);
- ``kernels``: its kernels that have not exited;
- ``devices``: whole devices, i.e. devices of its exclusive leases.

Nothing is counted across workers: a principal may hold its quota on each worker.

Configured in the worker's TOML file::

    [worker.quotas.default]            # everyone without a more specific entry
    vram = "16Gi"
    compute = "200%"
    kernels = 4
    devices = 1

    [worker.quotas.groups.staff]       # members of a group (JupyterHub groups)
    vram = "unlimited"

    [worker.quotas.principals."hub:alice"]
    kernels = 8

**How a principal's quota is found** (the one rule, `Quotas.resolve`), for each dimension on its
own: the principal's own entry when it sets that dimension; else the most generous value among
the entries of the principal's groups that set it ("unlimited" beats any number); else the
``default`` entry's value; else no limit. So a principal-specific entry always wins, a group can
raise a default, and a dimension no entry names is unlimited.

``check(quota, held, asked)`` says whether holding ``held + asked`` stays within ``quota``: None,
or an `OverQuota` that names the dimensions passed and reads as a sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tf_remoting.quantities import QuantityError, format_bytes, format_percent, parse_bytes, parse_percent

DIMENSIONS = ("vram", "compute", "kernels", "devices")
UNLIMITED = "unlimited"
_HINTS = {
    "vram": 'a memory quantity such as "16Gi"',
    "compute": 'a percentage of one device, summed over slices, such as "200%"',
    "kernels": "a whole number of kernels (0 or more)",
    "devices": "a whole number of whole devices (0 or more)",
}


@dataclass(frozen=True)
class Quota:
    """Limits of one principal on one worker; None: no limit. ``source``: the entries that set it."""

    vram: int | None = None
    compute: int | None = None
    kernels: int | None = None
    devices: int | None = None
    source: str = ""

    @property
    def unlimited(self) -> bool:
        return all(getattr(self, d) is None for d in DIMENSIONS)

    def text(self) -> str:
        parts = [f"{_amount(d, v)} {_label(d)}" for d in DIMENSIONS if (v := getattr(self, d)) is not None]
        return ", ".join(parts) if parts else "no limit"


@dataclass(frozen=True)
class Use:
    """What a principal holds, or asks for, in the quota's dimensions."""

    vram: int = 0
    compute: int = 0
    kernels: int = 0
    devices: int = 0

    def __add__(self, other: Use) -> Use:
        return Use(*(getattr(self, d) + getattr(other, d) for d in DIMENSIONS))

    def text(self, only: Iterable[str] = DIMENSIONS) -> str:
        return ", ".join(f"{_amount(d, getattr(self, d))} {_label(d)}" for d in only)


@dataclass(frozen=True)
class OverQuota:
    """Held + asked would pass the quota in ``over`` (dimension names)."""

    principal: str
    quota: Quota
    held: Use
    asked: Use
    over: tuple[str, ...]

    def sentence(self) -> str:
        who = f"principal {self.principal!r}" if self.principal else "this principal"
        dims = self.over
        limits = ", ".join(f"{_amount(d, getattr(self.quota, d))} {_label(d)}" for d in dims)
        source = f" (set by {self.quota.source})" if self.quota.source else ""
        return (f"over quota: {who} may hold at most {limits} on this worker{source}; it holds "
                f"{self.held.text(dims)} and asked for {self.asked.text(dims)} more. Release a kernel or lease "
                "you no longer need, ask for less, or ask the worker's administrator for a larger quota.")


def _label(dimension: str) -> str:
    return {"vram": "VRAM", "compute": "compute", "kernels": "kernel(s)", "devices": "whole device(s)"}[dimension]


def _amount(dimension: str, value: int | None) -> str:
    if value is None:
        return "unlimited"
    if dimension == "vram":
        return format_bytes(value)
    if dimension == "compute":
        return format_percent(value)
    return str(value)


def check(quota: Quota, held: Use, asked: Use, principal: str = "") -> OverQuota | None:
    """None when ``held + asked`` stays within ``quota``; else what passes it.

    Only the dimensions asked for count: a principal already over its VRAM quota (the quota was
    lowered) may still start a kernel in a lease it holds, and may shrink a slice.
    """
    total = held + asked
    over = tuple(d for d in DIMENSIONS
                 if getattr(asked, d) > 0 and (limit := getattr(quota, d)) is not None and getattr(total, d) > limit)
    return OverQuota(principal, quota, held, asked, over) if over else None


# ---------------------------------------------------------------------- configuration

# One entry: dimension -> limit, None meaning an explicit "unlimited". Absent: the entry does not set it.
Entry = Mapping[str, int | None]


def _parse_value(where: str, dimension: str, value: object) -> int | None:
    bad = f"{where}.{dimension} = {value!r} is not valid: use {_HINTS[dimension]}, or \"{UNLIMITED}\"."
    if value == UNLIMITED:
        return None
    if isinstance(value, bool):
        raise ValueError(bad)
    try:
        if dimension == "vram" and isinstance(value, (str, int)):
            return parse_bytes(value)
        if dimension == "compute" and isinstance(value, (str, int)):
            return parse_percent(value, allow_over=True)
    except QuantityError as exc:
        raise ValueError(f"{bad} ({exc})") from None
    if dimension in ("kernels", "devices") and isinstance(value, int) and value >= 0:
        return value
    raise ValueError(bad)


def _parse_entry(where: str, data: object) -> dict[str, int | None]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a table of limits (vram, compute, kernels, devices), not {data!r}.")
    unknown = sorted(set(data) - set(DIMENSIONS))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}: a quota sets "
                         f"{', '.join(DIMENSIONS)}.")
    return {d: _parse_value(where, d, v) for d, v in data.items()}


@dataclass(frozen=True)
class Quotas:
    """The worker's quota entries (``[worker.quotas]``)."""

    default: Entry = field(default_factory=dict)
    principals: Mapping[str, Entry] = field(default_factory=dict)
    groups: Mapping[str, Entry] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: object) -> Quotas:
        """From the ``[worker.quotas]`` table; ValueError with a sentence naming the bad key and value."""
        where = "worker.quotas"
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a table with default, principals and groups, not {data!r}.")
        unknown = sorted(set(data) - {"default", "principals", "groups"})
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}: use [{where}.default], "
                             f"[{where}.principals.NAME] and [{where}.groups.NAME].")
        tables: dict[str, dict[str, Entry]] = {}
        for kind in ("principals", "groups"):
            table = data.get(kind, {})
            if not isinstance(table, Mapping):
                raise ValueError(f"{where}.{kind} must be a table of NAME = {{limits}}, not {table!r}.")
            tables[kind] = {name: _parse_entry(f"{where}.{kind}.{name}", entry) for name, entry in table.items()}
        return cls(_parse_entry(f"{where}.default", data.get("default", {})), tables["principals"], tables["groups"])

    @property
    def configured(self) -> bool:
        return bool(self.default or self.principals or self.groups)

    def resolve(self, principal: str, groups: Iterable[str] = ()) -> Quota:
        """The principal's quota: the rule in this module's docstring."""
        own = self.principals.get(principal, {})
        member = sorted(g for g in set(groups) if g in self.groups)
        limits: dict[str, Any] = {}
        sources: list[str] = []

        def note(source: str) -> None:
            if source not in sources:
                sources.append(source)

        for d in DIMENSIONS:
            if d in own:
                limits[d] = own[d]
                note(f"principal {principal}")
                continue
            setting = [(g, self.groups[g][d]) for g in member if d in self.groups[g]]
            if setting:
                group, value = max(setting, key=lambda gv: (gv[1] is None, gv[1] or 0))
                limits[d] = value
                note(f"group {group}")
            elif d in self.default:
                limits[d] = self.default[d]
                note("default")
        sources.sort(key=lambda src: (not src.startswith("principal "), src == "default", src))
        return Quota(**limits, source=", ".join(sources))



class LineQuota:
    """The waiting line's quota check for one pass (`waiting_line.QuotaCheck`).

    ``held``: what each principal holds when the pass starts. The line hands in each principal's
    VRAM and compute with the pass's grants added; whole devices it does not, so they are counted
    here: an entry this check let through was granted exactly when its principal's VRAM/compute
    changed before the principal's next entry is asked about. ``refusals``: entry id -> OverQuota.
    """

    def __init__(self, quota_of: Callable[[str], Quota], held: Mapping[str, Use]) -> None:
        self.quota_of = quota_of
        self.held = held
        self.refusals: dict[str, OverQuota] = {}
        self._devices = {p: u.devices for p, u in held.items()}
        self._let_through: dict[str, tuple[tuple[int, int], int]] = {}  # principal -> (its usage then, devices)

    def __call__(self, entry: Any, usage: Mapping[str, tuple[int, int]]) -> str | None:
        p = entry.principal
        now = tuple(usage.get(p, (0, 0)))
        if p in self._let_through:
            before, devices = self._let_through.pop(p)
            if now != before:
                self._devices[p] = self._devices.get(p, 0) + devices
        held = Use(vram=now[0], compute=now[1], kernels=self.held.get(p, Use()).kernels,
                   devices=self._devices.get(p, 0))
        over = check(self.quota_of(p), held, asked_by(entry), p)
        if over is not None:
            self.refusals[entry.id] = over
            return over.sentence()
        self._let_through[p] = ((now[0], now[1]), entry.count if entry.whole else 0)
        return None


def asked_by(entry: Any) -> Use:
    """What a waiting-line entry asks for: its slice on each of ``count`` devices; a whole-device
    request also ``count`` devices (its VRAM counted as the least it accepts)."""
    return Use(vram=entry.vram * entry.count, compute=entry.compute * entry.count,
               devices=entry.count if entry.whole else 0)
