"""How an int8 case is graded: on an evaluation set, by measures that describe quantization.

An int8 file is not within 1e-4 of anything: its error is the quantization's, set by scales and
rounding, so the element-wise atol/rtol rule of the float precisions cannot grade it. An int8
case is graded instead against the float64 oracle on ``EVAL_SAMPLES`` seeded samples drawn from
their own random stream (never the calibration inputs, never the timed inputs), or on the
user's ``--eval-inputs`` file, by:

- top-1 agreement: the share of samples whose argmax matches the oracle's (classification);
- cosine similarity of each output with the oracle's;
- relative RMS error, ``||y - ref|| / ||ref||`` over the output (``agreement.relative_rms``):
  defined for a regression head whose single values sit near zero.

This is agreement with the float model on the given inputs, not accuracy on a task.
The thresholds come from evidence on both sides (results/int8-evidence/, made by
scripts/int8_evidence.py): correct int8 files of every variant, layout and activation type
against the quantization bugs that happen (ccnbench.models.int8_faults) and the export faults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ccnbench.source import ModelSource

# 64 samples: top-1 agreement in steps of 1/64; on the small preset (N = 3) the float64 oracle
# costs about 1 s and the int8 runs well under 1 s per case, paid once per case, never timed.
EVAL_SAMPLES = 64
# The evaluation set's random stream: apart from make_inputs' (seed * 7919 + batch) and from the
# calibration's (ccnbench.formats.int8.CALIBRATION_STREAM).
EVAL_STREAM = 2_000_003

# (least top-1 agreement, least cosine, largest relative RMS error) per precision, set from
# results/int8-evidence/ by scripts/int8_evidence.py (docs/evidence/int8.md).
# Each bound is the geometric mean of the worst correct file and the mildest bug beyond 1.2x it,
# per measure as an error (1 - top-1, 1 - cosine, rel RMS): u8 correct <= 0.172 / 5.3e-3 / 0.103,
# s8 correct <= 0.453 / 0.119 / 0.656 (symmetric s8 activations spend half their range on the
# negative side that LeakyReLU leaves nearly empty). Bugs within those are quantization noise.
BOUNDS = {
    "int8-u8": (0.8, 1 - 7.1e-3, 0.12),
    "int8-s8": (0.5, 1 - 0.14, 0.74),
}


_oracle: dict[tuple[str, ...], tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] = {}


def evaluation_set(
    source: ModelSource, seed: int = 0, path: Path | str | None = None, samples: int = EVAL_SAMPLES
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(inputs, float64 oracle outputs) of the evaluation set, computed once per process."""
    key = (source.kind, source.digest, str(seed), str(path), str(samples))
    if key not in _oracle:
        inputs = _user_inputs(source, Path(path)) if path else _seeded(source, seed, samples)
        _oracle[key] = (inputs, tuple(source.oracle(inputs)))
    return _oracle[key]


def _seeded(source: ModelSource, seed: int, samples: int) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(EVAL_STREAM + seed)
    return tuple(
        torch.randn(samples, *source.input_shape, generator=generator) for _ in range(source.num_inputs)
    )


def _user_inputs(source: ModelSource, path: Path) -> tuple[Tensor, ...]:
    from ccnbench.errors import UsageError
    from ccnbench.formats.saved_reference import _arrays, _by_name

    arrays = _by_name(_arrays(path, "inputs"), tuple(source.input_names), str(path), "input")
    for name, a in zip(source.input_names, arrays):
        if tuple(a.shape[1:]) != tuple(source.input_shape):
            raise UsageError(
                f"--eval-inputs {path}: {name} has samples of shape {tuple(a.shape[1:])}, the model takes "
                f"{tuple(source.input_shape)}"
            )
    return tuple(torch.from_numpy(a).float().contiguous() for a in arrays)


def run_in_batches(
    infer: Callable[[list[Tensor]], Sequence[Tensor]], inputs: tuple[Tensor, ...], batch: int
) -> tuple[Tensor, ...]:
    """The outputs for every sample of ``inputs``, run ``batch`` samples at a time (the case's
    batch size: the shapes the runner was built for; a last partial chunk is run on its own)."""
    chunks: list[list[Tensor]] = []
    total = int(inputs[0].shape[0])
    for start in range(0, total, batch):
        part = [x[start : start + batch].contiguous() for x in inputs]
        chunks.append([y.detach().cpu().clone() for y in infer(part)])
    return tuple(torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0])))
