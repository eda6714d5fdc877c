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
            # Not the end of the inputs: dora still delivers those queued before it, and an operator that
            # answers STOP here is removed first (dora 0.4.1 then drops them as "input for unknown
            # operator"). The runtime ends the operator once the stream is closed.
            log_stop(self.service, self.sent)
        return DoraStatus.CONTINUE
