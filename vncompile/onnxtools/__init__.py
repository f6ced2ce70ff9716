"""ONNX tooling: export from torch, simplify, quantize (Q/DQ), run on ONNX Runtime, plan memory."""
