"""Build glue: the package layout and the one optional C extension; the other metadata lives in setup.cfg.

etool_sensor/_fastpath.c holds the compiled twins of the hot Python functions (the capture reader, the flow
frame decoder, masking, model arrays). It is optional: without a C compiler the install still succeeds and
the Python references do the work (same results, slower).
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
