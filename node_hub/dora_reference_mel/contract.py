"""The node's wire format under its public name, `dora_reference_mel.contract` (consumers import
`decode_mel_event` from here): the very module node/contract.py, which needs neither MLX nor dora."""

import sys

from .node import contract

sys.modules[__name__] = contract
