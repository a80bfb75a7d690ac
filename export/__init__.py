"""Model export: ONNX (torch.onnx), dynamic int8 quantisation, parity checks and packaging.

`etool-sensor export` finds add_export_arguments / export_main here.
"""

from .package import add_export_arguments, build_package, export_main, update_metrics  # noqa: F401
