"""torch.compile (inductor), and on CUDA its CUDA-graph mode. Compilation is build cost."""

from __future__ import annotations

import shutil
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ccnbench.backends.base import MEMORY_FORMATS, Backend, BuildOptions, Runner, Target
from ccnbench.backends.torch_eager import (
    TorchRunner,
    cuda_unavailable_reason,
    module_for_target,
    prepared_with_first_calls,
    warm_torch,
)

if TYPE_CHECKING:
    from ccnbench.source import ModelSource


def compiler_unavailable_reason(device: str) -> str | None:
    if device == "cpu":
        if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
            return "torch.compile on the CPU needs a C++ compiler: apt-get install g++"
        return None
    reason = cuda_unavailable_reason()
    if reason:
        return reason
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch.compile on CUDA needs triton: pip install triton"
    return None


@dataclass
class CompiledRunner(TorchRunner):
    """A compiled module. In CUDA-graph mode each call starts a new graph step, so the outputs
    of one replay are not expected to survive the next (the timing loop discards them)."""

    cudagraphs: bool = False

    def infer(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        return super().infer(inputs)


class CompileBackend(Backend):
    name = "compile"
    devices = ("cpu", "cuda")
    description = "torch.compile with inductor, one specialised graph per batch size"
    mode: str | None = None
    memory_formats = MEMORY_FORMATS

    def precisions(self, device: str) -> tuple[str, ...]:
        return ("fp32", "fp16", "bf16")

    def availability(self, device: str) -> str | None:
        return compiler_unavailable_reason(device)

    def warm(self, device: str, options: BuildOptions) -> None:
        warm_compiler(Target(self.name, device).device_kind, options.threads)

    def prepare(self, source: ModelSource, target: Target, options: BuildOptions) -> Runner:
        torch.set_num_threads(options.threads)
        # Every requested batch size gets its own graph; leave room so none falls back to eager.
        # Raised, never lowered, and no torch._dynamo.reset(): the other members of a contest
        # keep their compiled code (and CUDA-graph trees), so none recompiles while it is timed.
        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(
            torch._dynamo.config,
            limit,
            max(getattr(torch._dynamo.config, limit), 8, 2 * len(options.batch_sizes)),
        )
        skips_before = cudagraph_skips()

        def compile_module(stream: torch.cuda.Stream | None) -> TorchRunner:
            module, details = module_for_target(source, target, options.precision, options.memory_format)
            # Static: one specialised graph per batch size. Dynamic batch: one graph for all sizes
            # (batch 1 still gets its own, as dynamo specialises sizes 0 and 1), far less compile time.
            dynamic = None if options.dynamic_batch else False
            compiled = torch.compile(own_frame(module), mode=self.mode, dynamic=dynamic, fullgraph=True)
            return CompiledRunner(
                target, source.output_names, details=details, uses_torch_allocator=True,
                module=compiled, _stream=stream, cudagraphs=self.mode == "reduce-overhead",
            )  # fmt: skip

        def compile_every_batch(runner: TorchRunner) -> None:
            # Compile now, for every batch size, so compilation is build cost and not warm-up.
            for batch in sorted(options.batch_sizes, reverse=True):
                inputs = [x.to(target.device_kind) for x in source.make_inputs(batch)]
                if options.dynamic_batch and batch > 1:
                    for x in inputs:
                        torch._dynamo.mark_dynamic(x, 0)
                for _ in range(
                    3 if self.mode == "reduce-overhead" else 1
                ):  # graphs are recorded on a later call
                    runner.infer(inputs)

        runner = prepared_with_first_calls(
            target,
            compile_module,
            compile_every_batch,
            {
                "mode": self.mode or "default",
                "dynamic_batch": options.dynamic_batch,
                "compiled_batch_sizes": list(options.batch_sizes),
            },
        )
        if self.mode == "reduce-overhead":
            runner.details.update(graph_details(cudagraph_skips() - skips_before))
        return runner


_compiler_warmed: set[str] = set()  # device kinds whose compiler this process has warmed


def warm_compiler(device_kind: str, threads: int) -> None:
    """torch's one-time costs plus the compiler's: importing dynamo and inductor and compiling
    one trivial function (code cache, C++ or triton toolchain, compile workers), so the first
    compiled member's build time is its own compilation only. The compiler's part runs once per
    process and device: a second reset would wipe members compiled since."""
    warm_torch(device_kind, threads)
    if device_kind in _compiler_warmed:
        return
    _compiler_warmed.add(device_kind)
    compiled = torch.compile(lambda x: x * 2 + 1, dynamic=False, fullgraph=True)
    compiled(torch.ones(4, device=device_kind))
    torch._dynamo.reset()  # leave no guards behind for the members
    if device_kind == "cuda":
        torch.cuda.synchronize()


def own_frame(module: torch.nn.Module) -> Callable[..., Any]:
    """``module``'s call behind a code object of its own, for ``torch.compile``.

    Dynamo keeps compiled graphs per code object, and ``torch.compile(module)`` enters through
    code every module shares (``nn.Module.__call__``, or the class's ``forward`` for kept and merged
    copies of one class): the graphs of every member of a contest would pile up in one cache and
    hit its recompile limit, which is why a ``torch._dynamo.reset()`` used to precede each build
    and wiped the other members' compiled code. A fresh code object per runner gives each member
    its own cache (its guards still check its module).
    """

    def call(*inputs: Tensor) -> Any:
        return module(*inputs)

    code = call.__code__.replace(co_name=f"ccnbench_member_{id(module):x}")
    fresh = types.FunctionType(code, call.__globals__, code.co_name, call.__defaults__, call.__closure__)
    return fresh


def cudagraph_skips() -> int:
    """Inductor's count of graphs it compiled without CUDA graphs in this process (its
    ``counters["inductor"]["cudagraph_skips"]``, bumped with the reason logged as a warning)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def graph_details(skips: int) -> dict[str, object]:
    """What a compile-graphs case records: a case whose graphs inductor skipped ran its kernels
    without CUDA graphs, so it is marked rather than reported as a CUDA-graph figure."""
    details: dict[str, object] = {"cudagraph_skips": skips, "cudagraphs": skips == 0}
    if skips:
        details["warning"] = (
            f"inductor skipped CUDA graphs {skips} time(s): this case ran without them (see the worker log)"
        )
    return details


class CompileGraphsBackend(CompileBackend):
    name = "compile-graphs"
    devices = ("cuda",)
    description = "torch.compile mode='reduce-overhead': inductor kernels replayed as CUDA graphs"
    mode = "reduce-overhead"
