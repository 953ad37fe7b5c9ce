"""The device: runtimes (eager, torch.compile, ONNX Runtime) and the latency protocol.

Imports: errors, methods (public names).
"""
