"""AOTInductor: a ``.pt2`` package compiled ahead of time, run without the model's Python code.

The package is built (or reused) by ``ccnbench.backends.aoti_build``; the runner only loads it with
``torch._inductor.aoti_load_package`` and calls it, so what is timed is what a user ships:
no Python model, no JIT compile in the process that runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

import ccnbench.backends.aoti_build as aoti_build
from ccnbench.backends.base import Backend, BuildOptions, Runner, Target
from ccnbench.backends.compiled import compiler_unavailable_reason
from ccnbench.backends.torch_eager import (
    TorchRunner,
    prepared_with_first_calls,
    warm_torch,
)
from ccnbench.models.torch_numerics import configure_cuda_numerics

if TYPE_CHECKING:
    from ccnbench.source import ModelSource


class AotiBackend(Backend):
    name = "aoti"
    devices = ("cpu", "cuda")
    artifact_format = "pt2"
    description = (
        "AOTInductor .pt2 package (torch.export + inductor ahead of time), no model code at run time"
    )

    def precisions(self, device: str) -> tuple[str, ...]:
        return aoti_build.PRECISIONS[device]

    def availability(self, device: str) -> str | None:
        # Building needs what torch.compile needs (a C++ compiler; triton on CUDA).
        reason = compiler_unavailable_reason(device)
        return reason.replace("torch.compile", "AOTInductor") if reason else None

    def warm(self, device: str, options: BuildOptions) -> None:
        warm_torch(Target(self.name, device).device_kind, options.threads)
        import torch._inductor.package  # noqa: F401 - the loader's import, paid once

    def artifact(self, source: ModelSource, target: Target, options: BuildOptions) -> aoti_build.Package:
        return aoti_build.package(source, target.device, options.precision, options.artifacts_dir)

    def prepare(self, source: ModelSource, target: Target, options: BuildOptions) -> Runner:
        torch.set_num_threads(options.threads)  # the package's OpenMP loops use torch's thread count
        details: dict[str, Any] = {}
        if target.is_cuda:
            details.update(configure_cuda_numerics(options.precision))
        # Building the package is the artifact's cost (recorded with it, once per model), like an
        # ONNX export; the runner's build cost is loading it and its first call.
        package = self.artifact(source, target, options)

        def load(stream: torch.cuda.Stream | None) -> TorchRunner:
            # A loaded package is called like a module, and takes the current stream when called.
            model = torch._inductor.aoti_load_package(str(package.path))
            return TorchRunner(
                target, package.output_names, details=details, uses_torch_allocator=True,
                module=model, _stream=stream,
            )  # fmt: skip

        def first_call(runner: TorchRunner) -> None:
            runner.infer([x.to(target.device_kind) for x in source.make_inputs(min(options.batch_sizes))])

        return prepared_with_first_calls(
            target,
            load,
            first_call,
            {
                "package": package.path.name,
                "package_bytes": package.size_bytes,
                "package_build_seconds": round(package.build_seconds, 3),
                "package_reused": package.reused,
                "package_machine": package.machine,
            },
        )
