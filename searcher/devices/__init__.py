"""The device: the runtime registry (registry.py; one module per runtime: eager, compiled, onnxruntime,
openvino; runtime.py says what each declares, the number formats it runs on this CPU included), the
ONNX graph they share (graph.py), the latency protocol (latency) with its speedup intervals and
adaptive rounds (adaptive), the host's timing lock (timelock), and the deployment artifacts `export
--format` writes (artifacts, with their folder layout and model card: layout, card).

Imports: errors, methods (public names).
"""
