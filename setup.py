"""Builds the optional C kernel of qdkit.strokes.simplify; everything else is in setup.cfg.

Where no compiler is present (or the build fails for any reason) the install goes on without it and
qdkit.strokes.simplify uses its numpy implementation, which gives the same results to the last bit.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the kernel is an optimisation, not a requirement."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # no compiler, no Python headers, ...
            self._skip(err)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as err:
            self._skip(err)

    @staticmethod
    def _skip(err: BaseException) -> None:
        print(f"qdkit: the optional C kernel of strokes.simplify was not built ({err}); "
              "the numpy implementation is used instead (same results, slower)", file=sys.stderr)  # fmt: skip


# No fused multiply-add, no fast-math: the kernel must round exactly as the numpy implementation does.
ARGS = ["/fp:precise"] if sys.platform == "win32" else ["-O2", "-ffp-contract=off", "-fno-fast-math"]

KERNEL = Extension("qdkit.strokes._simplify", ["qdkit/strokes/_simplify.c"], extra_compile_args=ARGS, optional=True)

setup(
    ext_modules=[KERNEL],
    cmdclass={"build_ext": OptionalBuildExt},
)
