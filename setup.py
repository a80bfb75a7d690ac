"""Build glue for the one optional C extension; all metadata lives in setup.cfg.

etool_sensor/_fastpath.c is the compiled packet path of etool_sensor/capture/ (glue: capture/native.py). It is
optional: without a C compiler the install still succeeds and capture/ reads captures in pure Python (same
results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "etool_sensor._fastpath",
            ["etool_sensor/_fastpath.c"],
            # -ffp-contract=off: timestamps and timers must round exactly as Python's floats do.
            extra_compile_args=["-O2", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
