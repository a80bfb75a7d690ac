"""Model export: ONNX (torch.onnx), int8 quantisation, dynamic token axes, graph simplification, parity
checks and packaging. export/ sits at the top of the checkout and installs as `etool_sensor.export` (setup.py).

`etool-sensor export` finds add_export_arguments / export_main here. They are imported on first use, so
that `python -m etool_sensor.export.package` (or .simplify, .fuse, ...) runs its module only once.
"""

_PACKAGE = ("add_export_arguments", "build_package", "export_main")


def __getattr__(name: str):
    if name in _PACKAGE:
        from . import package

        return getattr(package, name)
    raise AttributeError(f"module 'etool_sensor.export' has no attribute {name!r}")
