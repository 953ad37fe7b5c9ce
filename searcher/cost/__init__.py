"""The cost model: device profiles (microbenchmarks, eager and ONNX Runtime), the reference
models, the analytic cost model and its online calibration on measured trials.

Rules: cost imports devices, errors and methods; never problem, study, backends, report or cli.
"""
