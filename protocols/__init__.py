"""Evaluation protocols on frozen encoders: weighted kNN, the linear probe, semi-supervised
fine-tuning (:mod:`~sslbench.protocols.semisup`), transfer to detection
(:mod:`~sslbench.protocols.detection`, imported on demand: it brings pycocotools) and
representation diagnostics (:mod:`~sslbench.protocols.diagnostics`).

A protocol receives an *encoder* (any ``nn.Module`` mapping normalised images (B, C, H, W) to
features (B, D)), never a method; this package does not import :mod:`sslbench.methods`. The cores
are pure tensor functions (:func:`knn_predict`, :func:`linear_probe_features`); :func:`evaluate`
runs a list of named, versioned specs (:mod:`sslbench.protocols.spec`) on one encoder and checks
that the encoder came out bit-identical.
"""

from sslbench.protocols.diagnostics import CollapseWarning, run_diagnostics
from sslbench.protocols.features import extract_features
from sslbench.protocols.knn import knn_classify, knn_predict
from sslbench.protocols.linear import (
    LinearResult,
    assert_frozen,
    linear_probe_augmented,
    linear_probe_features,
)
from sslbench.protocols.output import ProtocolOutput
from sslbench.protocols.run import ProtocolResult, evaluate
from sslbench.protocols.semisup import fine_tune
from sslbench.protocols.spec import (
    DEFAULT_PROTOCOLS,
    DetectionSpec,
    DiagnosticsSpec,
    KNNSpec,
    LinearSpec,
    ProtocolSpec,
    SemiSupSpec,
    get_protocol,
    list_protocols,
    register_protocol,
)

__all__ = [
    "DEFAULT_PROTOCOLS",
    "CollapseWarning",
    "DetectionSpec",
    "DiagnosticsSpec",
    "KNNSpec",
    "LinearResult",
    "LinearSpec",
    "ProtocolOutput",
    "ProtocolResult",
    "ProtocolSpec",
    "SemiSupSpec",
    "assert_frozen",
    "evaluate",
    "extract_features",
    "fine_tune",
    "get_protocol",
    "knn_classify",
    "knn_predict",
    "linear_probe_augmented",
    "linear_probe_features",
    "list_protocols",
    "register_protocol",
    "run_diagnostics",
]
