"""``make demo``: the node's whole path on embedded defaults, no config file, temp dirs only.

Node up -> a synthetic CT study sent in over DICOM -> spooled durably -> study completed after
a short quiet period -> job runs -> a result object is C-STOREd to a demo receiver (an embedded
pynetdicom Storage SCP) -> summary -> everything shut down. Until the inference pipeline lands,
the job's action is the interim "send a result object" (see ``node.result_action``).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import BasicTextSRStorage  # type: ignore[attr-defined]

from node.config import NodeConfig, parse_model
from node.logsetup import configure_logging
from node.service import NodeService
from node.synthetic import synthetic_ct_study, write_study
from scp import DestinationSettings, StorageSender

__all__ = ["main"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoReceiver:
    """An embedded PACS stand-in that keeps what it receives in memory."""

    def __init__(self) -> None:
        self.received: list[Dataset] = []
        self.ae = AE(ae_title="DEMOPACS")
        self.ae.add_supported_context(BasicTextSRStorage)
        self.port = _free_port()

    def _on_store(self, event: Any) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def __enter__(self) -> DemoReceiver:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.shutdown()


def demo_config(state: Path, receiver_port: int) -> NodeConfig:
    return parse_model(
        {
            "node": {"name": "blindread-demo", "state_dir": str(state), "log_level": "INFO"},
            "scp": {"port": _free_port(), "min_free_bytes": 0},
            "completion": {"quiet_seconds": 1.0, "poll_seconds": 0.2},
            "destinations": {
                "results": {"ae_title": "DEMOPACS", "host": "127.0.0.1", "port": receiver_port}
            },
            "sender": {"max_attempts": 3, "initial_backoff_seconds": 0.5},
        },
        NodeConfig,
        "<demo defaults>",
    )


def main() -> int:
    configure_logging("INFO")
    log = logging.getLogger("node.demo")
    with tempfile.TemporaryDirectory(prefix="blindread-demo-") as tmp, DemoReceiver() as pacs:
        root = Path(tmp)
        cfg = demo_config(root / "state", pacs.port)
        svc = NodeService(cfg)
        svc.start()
        try:
            study = synthetic_ct_study(8, size=128)
            files = write_study(study, root / "modality")
            modality = DestinationSettings("BLINDREAD", "127.0.0.1", svc.port, "DEMO_CT")
            t0 = time.monotonic()
            sent = StorageSender().send(modality, files).sent
            log.info("modality sent %d instance(s) to the node", sent)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not svc.store.list("done"):
                time.sleep(0.1)
            jobs = svc.store.list()
            elapsed = time.monotonic() - t0
        finally:
            svc.stop()
        ok = len(jobs) == 1 and jobs[0].state == "done" and len(pacs.received) == 1
        print()
        print("BlindRead demo summary")
        print(f"  instances sent by the modality : {sent}")
        print(
            "  jobs                           : "
            + ", ".join(f"#{j.id} {j.state} study={j.study} files={len(j.files)}" for j in jobs)
        )
        if pacs.received:
            r = pacs.received[0]
            print(
                f"  result at demo PACS            : {r.Modality} "
                f"'{r.ContentSequence[0].TextValue}'"
            )
            print(
                f"  result in the original study   : "
                f"{r.StudyInstanceUID == study[0].StudyInstanceUID}"
            )
        print(f"  seconds from first send to done: {elapsed:.1f}")
        print(f"  outcome                        : {'OK' if ok else 'FAILED'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
