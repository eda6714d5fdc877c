"""Stand-in for a primespeech TTS node (dora-primespeech or dora-gpt-sovits-mlx) wired behind the
reference-mel node: `text` as the real nodes take it, `reference` (the `mel` events) where a TTS
node that uses this node's tensors takes them, `error` to release a text whose voice switch failed.

It does what such a node does at that boundary, without the model: for each text it takes the
reference of its voice switch (matched by request_id; a text that arrives first is held until its
reference or error comes), prepares GPT-SoVITS's inputs (refer [1, 704, T], prompt codes [1, 1, N],
prompt text), and prints one line per text, in order. Plain text is spoken with the current voice,
which the startup voice (VOICE_CHARACTER / VOICE_NAME on the reference-mel node) sets. With the same
variable set here, as the real TTS nodes have it, no text is spoken before that startup reference has
arrived: dora keeps each input in order, but not the order between two inputs (`text` and `reference`).
Exits 1 if a text was never spoken or a reference broke the contract. With TRANSCRIPT set, it also
writes one JSON line per startup voice and spoken text to that file, for tests to read without
parsing dora's captured log.
"""

import json
import os
import sys

from dora import Node

from dora_reference_mel.contract import ContractError, decode_error_event, decode_mel_event, parse_voice_switch


def main() -> int:
    references, errors, pending = {}, {}, []
    current, spoken, held, broken = None, 0, 0, 0
    startup_voice = os.environ.get("VOICE_CHARACTER") or os.environ.get("VOICE_NAME")
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
                references[ref.request_id] = ref
                if ref.metadata.get("startup"):
                    current = ref
                    print(f"tts: startup voice {ref.voice} refer {list(ref.spectrogram.shape)}")
                    record(startup=ref.voice, refer=list(ref.spectrogram.shape))
            elif event["id"] == "error":
                body = decode_error_event(event)
                errors[body["request_id"]] = body
            elif event["id"] == "text":
                text = event["value"][0].as_py()
                try:
                    switches = parse_voice_switch(text) is not None
                except ContractError:
                    switches = False  # a broken VOICE: line is spoken as is, as the real nodes do
                question_id = event["metadata"].get("question_id")
                pending.append((event["metadata"].get("request_id"), text, switches, question_id))
                held += switches and event["metadata"].get("request_id") not in references
        except ContractError as err:
            broken += 1
            print(f"tts: CONTRACT VIOLATION: {err}", file=sys.stderr)
            continue
        while pending and not (startup_voice and current is None):  # speak, in order, every settled text
            request_id, text, switches, question_id = pending[0]
            if switches and request_id not in references and request_id not in errors:
                break
            pending.pop(0)
            if switches and request_id in references:
                current = references[request_id]
            elif switches:
                print(f"tts: voice switch failed ({errors[request_id]['error']}); keeping the current voice")
            spoken += 1
            codes = "none" if current is None or current.codes is None else current.codes.shape[-1]
            print(f"tts: speak #{spoken} voice={current.voice if current else None} "
                  f"refer={list(current.spectrogram.shape) if current else None} codes={codes} "
                  f"ref_text={current.metadata.get('ref_text') if current else None!r} "
                  f"question_id={question_id} text={text!r}")
            record(voice=current.voice if current else None,
                   refer=list(current.spectrogram.shape) if current else None, codes=codes,
                   ref_text=current.metadata.get("ref_text") if current else None,
                   question_id=question_id, text=text)
    print(f"tts: spoke {spoken} texts, {held} held for their reference, {len(pending)} never spoken, "
          f"{broken} contract violations")
    return 1 if pending or broken else 0


if __name__ == "__main__":
    sys.exit(main())
