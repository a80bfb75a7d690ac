"""Build glue for the one optional C extension; all metadata lives in setup.cfg.

etool_sensor/_fastpath.c is the compiled packet path of etool_sensor/capture/ (glue: capture/native.py). It is
optional: without a C compiler the install still succeeds and capture/ reads captures in pure Python (same
results, slower).
"""

from setuptools import Extension, find_packages, setup

setup(
    # export/ sits at the top of the checkout and installs as etool_sensor.export, a name that cannot collide
    packages=find_packages(include=["etool_sensor", "etool_sensor.*"]) + ["etool_sensor.export"],
    package_dir={"etool_sensor.export": "export"},
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
