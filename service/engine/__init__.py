"""Arrays in, arrays out: ONNX graphs and ONNX Runtime sessions. Knows nothing of HTTP."""
