"""What flows through ``explain``: one runtime's timed units of work, a format's profile, and the table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ccnbench.roofline.reading import Reading
from ccnbench.roofline.roofs import RoofPair

# Row keys that are not modules.
OUTSIDE = "outside layers"
ADDED = "added by the runtime: "


@dataclass(frozen=True)
class LayerEvent:
    """One unit of work a runtime timed in one call: an ONNX Runtime node, an OpenVINO layer,
    the ops PyTorch ran inside one module, a TensorRT layer.

    ``modules`` are the paths of the modules whose work it is (several when the runtime fused
    them; none when it is no module's, such as the session's own overhead). ``added`` marks work
    the runtime added that no node of the model asked for (a Reorder between memory layouts).
    """

    name: str
    op: str
    kernel: str
    us: float
    modules: tuple[str, ...] = ()
    added: bool = False

    def with_us(self, us: float) -> LayerEvent:
        return LayerEvent(self.name, self.op, self.kernel, us, self.modules, self.added)


@dataclass(frozen=True)
class Overhead:
    """The format's fastest call without and with its profiler, timed in interleaved rounds."""

    fastest_us: float
    fastest_profiled_us: float | None
    rounds: int

    @property
    def factor(self) -> float | None:
        return self.fastest_profiled_us / self.fastest_us if self.fastest_profiled_us else None


@dataclass(frozen=True)
class FormatProfile:
    """One case (model, layout, target, precision, batch, threads) explained.

    ``events`` hold each unit's median time per call over ``calls`` profiled calls (a unit run
    several times in one call, such as a shared extractor, is summed within the call first); an
    event named ``outside layers`` holds what the call took beyond its units. ``note`` says why
    the layers could not be attributed, or how they were mapped when not by the exporter's metadata.
    """

    model: str
    layout: str
    target: str
    precision: str
    batch: int
    threads: int
    overhead: Overhead
    events: tuple[LayerEvent, ...] = ()
    calls: int = 0
    note: str | None = None
    trace: str | None = None

    @property
    def label(self) -> str:
        return f"{self.target} {self.layout}"

    @property
    def attributed(self) -> bool:
        return bool(self.events)

    @property
    def profiled_us(self) -> float:
        """The profiled call as the table adds it up: every event's median time."""
        return sum(e.us for e in self.events)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["profiled_us_per_call"] = self.profiled_us
        return data


@dataclass(frozen=True)
class Cell:
    """One format's share of one row: its time per call, its share of the profiled call, the
    kernels the runtime reported and how many units it ran there; with the model's layers
    counted, the row's FLOPs and least bytes and their roofline reading at that time."""

    us: float
    share: float
    kernels: tuple[str, ...]
    units: int
    fused: bool = False
    flops: int | None = None
    bytes: int | None = None
    reading: Reading | None = None


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    cells: tuple[Cell | None, ...]  # one per column; None: no time of its own in that format
    names: tuple[tuple[str, ...], ...] = ()  # per column, the module paths it covers there

    def us(self, column: int) -> float:
        cell = self.cells[column]
        return cell.us if cell else 0.0


@dataclass(frozen=True)
class LayerTable:
    """Layers as rows, formats as columns; ``compare`` orders rows by the difference they explain."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    totals: tuple[float, ...]
    compare: bool = False
    notes: tuple[str, ...] = ()
    # Per column: the roofs its runtime is read against, and the whole call's reading (the
    # fastest unprofiled call against the sum of the layers' traffic).
    roofs: tuple[RoofPair | None, ...] = ()
    calls: tuple[Reading | None, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
