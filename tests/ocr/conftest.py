import os

# the OCR engine uses at most 2 onnxruntime threads (shared 2-core machines)
os.environ.setdefault("HEALTHVAULT_OCR_THREADS", "2")
