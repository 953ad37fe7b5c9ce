"""The device: runtimes (eager, torch.compile, ONNX Runtime; OpenVINO in openvino_rt), the latency
protocol (latency) with its speedup intervals and adaptive rounds (adaptive), and the deployment
artifacts a runtime loads (artifacts).

Imports: errors, methods (public names).
"""
