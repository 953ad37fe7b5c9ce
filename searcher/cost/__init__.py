"""The cost model: device profiles (microbenchmarks: eager, ONNX Runtime, OpenVINO), the reference
models, the analytic cost model and its online calibration on measured trials, and a study's
screening (one predictor per runtime).

Imports: devices, errors, methods.
"""
