"""Build glue: the package layout and the one optional C extension; the other metadata lives in setup.cfg.

etool_sensor/_native/ holds the compiled twins of the hot Python functions, one .c file per twin (the capture
reader, the flow frame decoder, masking, model arrays, hello keys, TSV rows, uids; module.c is the module), built
into the one extension etool_sensor._fastpath. It is optional: without a C compiler the install still succeeds
and the Python references do the work (same results, slower).
"""

from setuptools import Extension, find_packages, setup

NATIVE = "etool_sensor/_native/"
NATIVE_SOURCES = ["module.c", "capture.c", "flow_frame.c", "mask_chunk.c", "encode_arrays.c", "hello_key.c",
                  "tsv_row.c", "uid_text.c"]

setup(
    # export/ sits at the top of the checkout and installs as etool_sensor.export, a name that cannot collide
    packages=find_packages(include=["etool_sensor", "etool_sensor.*"]) + ["etool_sensor.export"],
    package_dir={"etool_sensor.export": "export"},
    ext_modules=[
        Extension(
            "etool_sensor._fastpath",
            [NATIVE + name for name in NATIVE_SOURCES],
            # the shared header: a change rebuilds every file, and an sdist carries it
            depends=[NATIVE + "fastpath.h"],
            # -ffp-contract=off: timestamps and timers must round exactly as Python's floats do.
            extra_compile_args=["-O2", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
