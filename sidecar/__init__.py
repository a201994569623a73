"""seqwatch runtime: features, sequence windows, the wire codec, ONNX scoring and the sidecar.

This package never imports torch or pandas (DESIGN.md): it is what an operator installs
beside Zeek. Training (``seqwatch.training``) builds on it, never the other way round.
"""

__version__ = "0.1.0"
