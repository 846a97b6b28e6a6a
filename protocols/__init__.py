"""Evaluation protocols on frozen encoders: weighted kNN and the linear probe.

A protocol receives an *encoder* (any ``nn.Module`` mapping normalised images (B, C, H, W) to
features (B, D)), never a method; this package does not import :mod:`sslbench.methods`. The cores
are pure tensor functions (:func:`knn_predict`, :func:`linear_probe_features`); :func:`evaluate`
runs a list of named, versioned specs (:mod:`sslbench.protocols.spec`) on one encoder and checks
that the encoder came out bit-identical.
"""

from sslbench.protocols.features import extract_features
from sslbench.protocols.knn import knn_classify, knn_predict
from sslbench.protocols.linear import (
    LinearResult,
    assert_frozen,
    linear_probe_augmented,
    linear_probe_features,
)
from sslbench.protocols.run import ProtocolResult, evaluate
from sslbench.protocols.spec import (
    DEFAULT_PROTOCOLS,
    KNNSpec,
    LinearSpec,
    ProtocolSpec,
    get_protocol,
    list_protocols,
    register_protocol,
)

__all__ = [
    "DEFAULT_PROTOCOLS",
    "KNNSpec",
    "LinearResult",
    "LinearSpec",
    "ProtocolResult",
    "ProtocolSpec",
    "assert_frozen",
    "evaluate",
    "extract_features",
    "get_protocol",
    "knn_classify",
    "knn_predict",
    "linear_probe_augmented",
    "linear_probe_features",
    "list_protocols",
    "register_protocol",
]
