"""The cost model: device profiles (microbenchmarks, eager and ONNX Runtime), the reference
models, the analytic cost model and its online calibration on measured trials.

Imports: devices, errors, methods.
"""
