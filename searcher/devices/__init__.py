"""The device: runtimes (eager, torch.compile, ONNX Runtime) and the latency protocol.

Rules: devices imports errors and the public names of methods; nothing else of searcher.
"""
