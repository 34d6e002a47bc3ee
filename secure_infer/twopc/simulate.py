"""A program under SPU's single-process simulator: the Cheetah protocol, two parties, one process.

The real engine runs each party in its own process over a TLS link (the runtime's business);
the simulator runs the *same protocol* with both parties as threads of one process and an
in-memory link. It is what the translation's tests and the fixed-point check use to measure the
error the ring and fraction bits cause, without setting up a session. All inputs are secret
shared, as in the real engine (image from the hospital, weights from the vendor).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from secure_infer.twopc.program import FixedPoint, Program

__all__ = ["run_simulated", "runtime_config"]


def runtime_config(fp: FixedPoint) -> Any:
    """SPU's runtime configuration for the two-party Cheetah protocol with ``fp``."""
    import spu.libspu as libspu

    return libspu.RuntimeConfig(
        protocol=libspu.ProtocolKind.CHEETAH,
        field=getattr(libspu.FieldType, fp.field),
        fxp_fraction_bits=fp.fraction_bits,
    )


def run_simulated(program: Program, weights: Mapping[str, np.ndarray], image: np.ndarray,
                  fp: FixedPoint | None = None) -> tuple[np.ndarray, ...]:
    """Run ``program`` on one image under the two-party Cheetah simulator."""
    import spu.utils.simulation as spsim

    from secure_infer.twopc.translate import weight_args

    sim = spsim.Simulator(2, runtime_config(fp or FixedPoint()))
    x = np.asarray(image, dtype=np.dtype(program.input.dtype)).reshape(program.input.shape)
    outs = spsim.sim_jax(sim, program.fn)(x, *weight_args(program, weights))
    if not isinstance(outs, (tuple, list)):
        outs = (outs,)
    return tuple(np.asarray(o) for o in outs)
