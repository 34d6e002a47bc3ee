"""Two-party CKKS inference: parameters, keys, ONNX -> HE plan compiler, evaluator, client, server.

Knows nothing of DICOM networking, and nothing of the hospital node that uses it. Split along the
party line:

* the shared core, the modules at this level: parameters (``params``), the plan and its packing
  (``plan``, ``packing``), the public plan description (``spec``), the model manifest
  (``manifest``), the wire formats (``wire``, ``framing``, ``_ckks``, ``seal_io``), the error tree
  (``errors``), the hash-chain format of the vendor's chain and the node's audit ledger
  (``chain``), typed YAML config (``yamlconfig``) and
  ``check`` (``model check``, the one module that plays both parties);
* :mod:`secure_infer.hospital`: the secret-key session, preprocessing, the vendor client;
* :mod:`secure_infer.vendor`: compiler, evaluator, server, worker pool, context store,
  certificates, its own config and entry point (``python -m secure_infer.vendor``).

``hospital`` and ``vendor`` import the core, never each other. Names are imported lazily
(PEP 562): ``import secure_infer`` stays cheap, and TenSEAL, onnxruntime or uvicorn load only when
the part that needs them is used. Everything another package may use is in ``__all__``.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports below re-export ``__all__``, built from _WHERE)

from __future__ import annotations

from typing import TYPE_CHECKING

from secure_infer._lazy import lazy_getattr

_WHERE = {
    # model package
    "Code": "manifest",
    "InputSpec": "manifest",
    "Manifest": "manifest",
    "ManifestError": "manifest",
    "OutputLabel": "manifest",
    "Preprocessing": "manifest",
    "load_manifest": "manifest",
    "ModelRef": "modelref",
    "parse_model_ref": "modelref",
    # errors
    "CiphertextError": "errors",
    "CompileError": "errors",
    "ContextError": "errors",
    "InferenceError": "errors",
    "ModelNotFoundError": "errors",
    "ParameterError": "errors",
    "UnknownContextError": "errors",
    # parameters, plan, public spec
    "CkksParams": "params",
    "select_params": "params",
    "Plan": "plan",
    "MAX_CIPHERTEXTS": "spec",
    "PlanSpec": "spec",
    # the hash-chain format (the vendor's request chain and the hospital's audit ledger)
    "GENESIS": "chain",
    "ChainError": "chain",
    "ChainHead": "chain",
    "HashChain": "chain",
    "LinkFault": "chain",
    "SignedHead": "chain",
    "append_line": "chain",
    "body_hash": "chain",
    "canonical_json": "chain",
    "cut_torn_tail": "chain",
    "entry_hash": "chain",
    "head_fault": "chain",
    "key_fingerprint": "chain",
    "load_public_key": "chain",
    "public_key_pem": "chain",
    "publish_public_key": "chain",
    "read_last_line": "chain",
    "sign_hash": "chain",
    "signature_valid": "chain",
    "signing_input": "chain",
    "verify_chain": "chain",
    # typed YAML config (the vendor's and the node's)
    "FrozenModel": "yamlconfig",
    "Port": "yamlconfig",
    "ProblemsError": "yamlconfig",
    "format_loc": "yamlconfig",
    "format_validation_error": "yamlconfig",
    "load_yaml_model": "yamlconfig",
    "parse_yaml_model": "yamlconfig",
    "read_yaml": "yamlconfig",
    # model check (plays both parties)
    "MODEL_CHECK_HELP": "check",
    "add_model_check_arguments": "check",
    "run_model_check": "check",
    # hospital side
    "HospitalSession": "hospital.session",
    "apply_activations": "hospital.session",
    "PreprocessError": "hospital.preprocess",
    "preprocess": "hospital.preprocess",
    "preprocess_for_manifest": "hospital.preprocess",
    "ClientSettings": "hospital.client",
    "Exchange": "hospital.client",
    "InferenceResult": "hospital.client",
    "VendorClient": "hospital.client",
    "VendorError": "hospital.client",
    "VendorUnavailableError": "hospital.client",
    # vendor side
    "compile_onnx": "vendor.compiler",
    "PublicContext": "vendor.model",
    "VendorModel": "vendor.model",
    "JobReusedError": "vendor.server",
    "ServerSettings": "vendor.server",
    "TlsFiles": "vendor.server",
    "serve": "vendor.server",
    "CertPair": "vendor.certs",
    "create_ca": "vendor.certs",
    "issue_client_cert": "vendor.certs",
    "issue_server_cert": "vendor.certs",
    "VendorConfig": "vendor.config",
    "VendorConfigError": "vendor.config",
    "load_vendor_config": "vendor.config",
    "vendor_main": "vendor.cli",
    # demo data (used by the node's demo harness)
    "dicom_like_phantom": "demo.phantoms",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_getattr(__name__, _WHERE)


if TYPE_CHECKING:  # the same names, eagerly, so type checkers see their real types
    from secure_infer.chain import (
        GENESIS,
        ChainError,
        ChainHead,
        HashChain,
        LinkFault,
        SignedHead,
        append_line,
        body_hash,
        canonical_json,
        cut_torn_tail,
        entry_hash,
        head_fault,
        key_fingerprint,
        load_public_key,
        public_key_pem,
        publish_public_key,
        read_last_line,
        sign_hash,
        signature_valid,
        signing_input,
        verify_chain,
    )
    from secure_infer.check import MODEL_CHECK_HELP, add_model_check_arguments, run_model_check
    from secure_infer.demo.phantoms import dicom_like_phantom
    from secure_infer.errors import (
        CiphertextError,
        CompileError,
        ContextError,
        InferenceError,
        ModelNotFoundError,
        ParameterError,
        UnknownContextError,
    )
    from secure_infer.hospital.client import (
        ClientSettings,
        Exchange,
        InferenceResult,
        VendorClient,
        VendorError,
        VendorUnavailableError,
    )
    from secure_infer.hospital.preprocess import (
        PreprocessError,
        preprocess,
        preprocess_for_manifest,
    )
    from secure_infer.hospital.session import HospitalSession, apply_activations
    from secure_infer.manifest import (
        Code,
        InputSpec,
        Manifest,
        ManifestError,
        OutputLabel,
        Preprocessing,
        load_manifest,
    )
    from secure_infer.modelref import ModelRef, parse_model_ref
    from secure_infer.params import CkksParams, select_params
    from secure_infer.plan import Plan
    from secure_infer.spec import MAX_CIPHERTEXTS, PlanSpec
    from secure_infer.vendor.certs import (
        CertPair,
        create_ca,
        issue_client_cert,
        issue_server_cert,
    )
    from secure_infer.vendor.cli import vendor_main
    from secure_infer.vendor.compiler import compile_onnx
    from secure_infer.vendor.config import VendorConfig, VendorConfigError, load_vendor_config
    from secure_infer.vendor.model import PublicContext, VendorModel
    from secure_infer.vendor.server import JobReusedError, ServerSettings, TlsFiles, serve
    from secure_infer.yamlconfig import (
        FrozenModel,
        Port,
        ProblemsError,
        format_loc,
        format_validation_error,
        load_yaml_model,
        parse_yaml_model,
        read_yaml,
    )
