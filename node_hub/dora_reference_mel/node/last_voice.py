"""The voice a node's texts were last switched to, kept in CODES_DIR so that a node dora restarts
(`restart_policy`) comes back with that voice rather than its startup voice.

One small file per node id, `.last-voice-<node id>.state`, written atomically; it names the dataflow it
was written in, so a new dataflow (a fresh `dora start`) begins with the startup voice again."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from ..store.files import StoreFileError, atomic_write, read_regular
from .contract import VoiceSwitch

log = logging.getLogger(__name__)

MAX_STATE_BYTES = 256 * 1024  # a CUSTOM path (4 KiB) and prompt text (16 KiB), JSON-escaped
SWITCH_FIELDS = ("name", "ref_audio", "ref_text", "lang", "sovits_weights")


def dora_run(environ=os.environ) -> tuple[str, str] | None:
    """(node id, dataflow id) of the dataflow node this process is, from dora's DORA_NODE_CONFIG; None
    outside a dataflow (dora's test mode, a test's service)."""
    config = environ.get("DORA_NODE_CONFIG", "")
    found = [re.search(rf"^{key}: *['\"]?([^'\"\n]+)", config, re.MULTILINE) for key in ("node_id", "dataflow_id")]
    return (found[0][1].strip(), found[1][1].strip()) if all(found) else None


class LastVoice:
    def __init__(self, codes_dir: Path, run: tuple[str, str], *, write_back: bool):
        self.node_id, self.dataflow_id = run
        self.path = Path(codes_dir) / f".last-voice-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.node_id)[:100]}.state"
        self.enabled = write_back
        self._written: dict | None = None
        self._failure_logged = False
        if not write_back:
            log.info("MEL_WRITE_BACK=false: the voice texts are switched to is not kept in CODES_DIR; if dora "
                     "restarts this node, it comes back with its startup voice")

    def read(self) -> VoiceSwitch | None:
        """The voice texts were last switched to in this dataflow, or None (none yet, another dataflow's)."""
        if not self.enabled:
            return None
        try:
            blob, _ = read_regular(self.path, None, MAX_STATE_BYTES)
            state = json.loads(blob)
        except StoreFileError as err:
            if not err.missing:
                log.warning("ignoring %s (%s): serving the startup voice", self.path, err.reason)
            return None
        except (ValueError, RecursionError):
            log.warning("ignoring %s (not JSON): serving the startup voice", self.path)
            return None
        if not isinstance(state, dict) or (state.get("node_id"), state.get("dataflow_id")) != (
                self.node_id, self.dataflow_id):
            return None  # written by an earlier dataflow: this one begins with its startup voice
        fields = {k: state.get(k) for k in SWITCH_FIELDS}
        if not isinstance(fields["name"], str) or not all(v is None or isinstance(v, str) for v in fields.values()):
            log.warning("ignoring %s (fields of the wrong type): serving the startup voice", self.path)
            return None
        self._written = state
        return VoiceSwitch(text="", **fields)

    def write(self, switch: VoiceSwitch) -> None:
        """Keep `switch` as the voice to come back with; a store that cannot be written is logged once."""
        state = {"node_id": self.node_id, "dataflow_id": self.dataflow_id,
                 **{k: getattr(switch, k) for k in SWITCH_FIELDS}}
        if not self.enabled or state == self._written:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(state).encode())
        except OSError as err:
            if not self._failure_logged:
                self._failure_logged = True
                log.error("cannot keep the last voice in %s (%s); if dora restarts this node, it comes back with its "
                          "startup voice", self.path, err)
            return
        self._written = state
