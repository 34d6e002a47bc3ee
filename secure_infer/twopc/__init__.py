"""Exact two-party inference (Cheetah, via SecretFlow SPU): the parts both parties share.

The CKKS engine (the rest of :mod:`secure_infer`) suits HE-friendly models only. This package is
the second engine's *public* half: the network's architecture turned into a pure function that
both the hospital and the vendor compile from the same description (its hash compared before
any secret input flows), and the fixed-point encoding both use. The vendor's party lives in
:mod:`secure_infer.vendor`, the hospital's in :mod:`secure_infer.hospital`; neither imports the
other. SPU and JAX come with the ``2pc`` extra and are imported only where used.
"""
