"""The vendor's side of two-party inference: compiler, evaluator, server, certificates, config.

Runs without the hospital node: ``python -m secure_infer.vendor serve --config vendor.yaml`` (or
the ``blindread-vendor`` script) imports nothing of ``node`` and nothing of
:mod:`secure_infer.hospital`, only the shared core of :mod:`secure_infer`. Modules with a
leading underscore (worker pool, context store, metrics, HTTP error mapping) are internal.
Names are imported lazily (PEP 562), so the CLI's ``--help`` loads neither TenSEAL nor uvicorn.
"""

from __future__ import annotations

from secure_infer._lazy import lazy_getattr

_WHERE = {
    # the compiled model
    "PublicContext": "model",
    "VendorModel": "model",
    "build_spec": "model",
    "compile_onnx": "compiler",
    # the server
    "JobReusedError": "server",
    "ServerSettings": "server",
    "TlsFiles": "server",
    "VendorServer": "server",
    "build_app": "server",
    "serve": "server",
    # certificates (the vendor runs the CA)
    "CertPair": "certs",
    "cert_common_name": "certs",
    "cert_fingerprint": "certs",
    "create_ca": "certs",
    "issue_client_cert": "certs",
    "issue_server_cert": "certs",
    "load_ca": "certs",
    # config and entry point
    "VendorConfig": "config",
    "VendorConfigError": "config",
    "load_vendor_config": "config",
    "main": "cli",
    "vendor_main": "cli",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_getattr(__name__, _WHERE)
