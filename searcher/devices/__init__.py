"""The device: the runtime registry (registry.py; one module per runtime: eager, compiled, onnxruntime,
openvino; runtime.py says what each declares), the ONNX graph they share (graph.py), the latency
protocol (latency) with its speedup intervals and adaptive rounds (adaptive), and the deployment
artifacts `export --format` writes (artifacts).

Imports: errors, methods (public names).
"""
