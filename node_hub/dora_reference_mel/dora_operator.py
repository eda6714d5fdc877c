"""The same node as a dora Python operator (`operator: python: .../dora_operator.py`).

A second thin shell over ReferenceMelService.answer, the handler the custom node runs: no behaviour
lives here. (Named dora_operator.py, not operator.py: dora puts this folder on sys.path, where a
file called operator.py would shadow Python's own `operator` module.)
"""

import collections

from dora import DoraStatus

from dora_reference_mel.node.main import configured_service, log_stop, send_outputs


class Operator:
    def __init__(self):
        self.service = configured_service()  # a bad setting: one line naming it, and the operator stops
        self.sent = collections.Counter()
        self.pending = self.service.startup()  # an operator can send only from on_event: before the first event's answer

    def on_event(self, dora_event, send_output) -> DoraStatus:
        if dora_event["type"] == "INPUT":
            outputs, self.pending = self.pending + self.service.answer(dora_event), []
            send_outputs(send_output, outputs, self.sent)
        elif dora_event["type"] == "STOP":
            # Not the end of the inputs, but dora's operator runtime closes this operator's channel as it
            # forwards STOP and drops what still arrives ("input for unknown operator", docs/delivery.md):
            # answering CONTINUE is all an operator can do. The custom node form keeps answering.
            log_stop(self.service, self.sent)
        return DoraStatus.CONTINUE
