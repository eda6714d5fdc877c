"""Stand-in for a primespeech TTS node (dora-primespeech or dora-gpt-sovits-mlx) wired behind the
reference-mel node: `text` as the real nodes take it, and `reference` (the `mel` events) where a TTS
node that uses this node's tensors takes them. An `error` input is optional: it only prints why a
switch failed.

It does what such a node does at that boundary, without the model. Every text the reference-mel node
forwards names, in `reference_request_id`, the `reference_id` of the reference it is to be spoken with (its own voice
switch's, or the voice before it when the switch failed; absent before any reference: the TTS node's
own voice). dora keeps each input in order, but not the order between `text` and `reference`, so a
text whose reference has not arrived yet is held until it has. For each text it prepares GPT-SoVITS's
inputs (refer [1, 704, T], prompt codes [1, 1, N], prompt text) and prints one line, in order.
Exits 1 if a text was never spoken or a reference broke the contract. With TRANSCRIPT set, it also
writes one JSON line per startup voice and spoken text to that file (with the xxh3-64 digest of the
reference's bytes and its prompt codes), for tests to read without parsing dora's captured log.
"""

import json
import os
import sys

import xxhash
from dora import Node

from dora_reference_mel.contract import REFERENCE_KEY, ContractError, decode_error_event, decode_mel_event


def summary(ref) -> dict:
    """What speaking needs of a reference. Kept instead of the event, whose value is dora's shared
    memory: holding it would keep the sender waiting for that memory back when the dataflow ends."""
    return {"voice": ref.voice, "refer": list(ref.spectrogram.shape), "source": ref.source,
            "codes": "none" if ref.codes is None else ref.codes.shape[-1], "ref_text": ref.metadata.get("ref_text"),
            "digest": xxhash.xxh3_64_hexdigest(ref.spectrogram.tobytes()),
            "prompt_codes": None if ref.codes is None else ref.codes.reshape(-1).tolist()}


def main() -> int:
    references, pending = {}, []
    spoken, held, broken = 0, 0, 0
    node = Node()
    transcript = None
    if os.environ.get("TRANSCRIPT"):
        os.makedirs(os.path.dirname(os.environ["TRANSCRIPT"]) or ".", exist_ok=True)
        transcript = open(os.environ["TRANSCRIPT"], "a", encoding="utf-8")

    def record(**entry):
        if transcript:
            transcript.write(json.dumps(entry) + "\n")
            transcript.flush()

    for event in node:
        if event["type"] != "INPUT":
            continue
        try:
            if event["id"] == "reference":
                ref = decode_mel_event(event)
                references[ref.reference_id] = summary(ref)
                if ref.metadata.get("startup"):
                    print(f"tts: startup voice {ref.voice} refer {list(ref.spectrogram.shape)}")
                    record(startup=ref.voice, refer=list(ref.spectrogram.shape))
            elif event["id"] == "error":
                body = decode_error_event(event)
                print(f"tts: voice switch failed ({body['error']}); the text keeps the voice before it")
            elif event["id"] == "text":
                metadata = event["metadata"]
                wanted = metadata.get(REFERENCE_KEY)
                pending.append((wanted, event["value"][0].as_py(), metadata.get("question_id")))
                held += wanted is not None and wanted not in references
        except ContractError as err:
            broken += 1
            print(f"tts: CONTRACT VIOLATION: {err}", file=sys.stderr)
            continue
        while pending and (pending[0][0] is None or pending[0][0] in references):  # speak, in order
            wanted, text, question_id = pending.pop(0)
            current = references.get(wanted) or {"voice": None, "refer": None, "source": None, "codes": "none",
                                                 "ref_text": None, "digest": None, "prompt_codes": None}
            spoken += 1
            print(f"tts: speak #{spoken} voice={current['voice']} refer={current['refer']} codes={current['codes']} "
                  f"ref_text={current['ref_text']!r} question_id={question_id} text={text!r}")
            record(**current, question_id=question_id, text=text)
    print(f"tts: spoke {spoken} texts, {held} held for their reference, {len(pending)} never spoken, "
          f"{broken} contract violations")
    return 1 if pending or broken else 0


if __name__ == "__main__":
    sys.exit(main())
