"""The demo harness behind ``make demo`` (``python -m node.demo``): not part of a running node.

It starts the real deployment on one machine: a private CA and certificates, the vendor peer
as a separate process with the shipped non-clinical demo model, a PACS (Orthanc when installed,
else an embedded pynetdicom one), the node, and a modality sending synthetic phantom studies.
Tests and benchmarks use the same :class:`node.demo.stack.Stack`, so the demo and the
end-to-end test exercise one code path.
"""
