"""Wire formats <-> numpy. Never imports fastapi or onnxruntime."""
