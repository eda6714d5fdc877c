#!/usr/bin/env bash
# Regenerates the demo voices and the speech fixtures of the tests from text, with Debian's
# espeak-ng and sox (apt-get install espeak-ng sox). Real synthesized speech, not tones:
# the spectrogram tests need formants, silences and onsets like a recorded voice has.
#   bash models/make_demo_voices.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

speak() { # speak VOICE PITCH SPEED TEXT OUT.wav  (espeak-ng writes 22050 Hz mono 16-bit)
  espeak-ng -v "$1" -p "$2" -s "$3" -w "$5" "$4"
}

# Demo voices: 3 to 10 s, different rates, one stereo. Codes are placeholders (see make_demo_codes.py).
speak en-us 45 150 "Good morning. This is the reference voice of the demo dataflow. It is ten seconds of speech, recorded at forty eight kilohertz, so the node has to resample it before the spectrogram." "$tmp/aria.wav"
speak en-gb 30 160 "Hello there, I am a second voice, a little lower, sampled at sixteen kilohertz in mono." "$tmp/basil.wav"
speak en-us+f3 60 170 "And I am the stereo voice. My two channels differ, so the mono mix matters." "$tmp/cleo_l.wav"
speak en-us+f3 55 165 "And I am the stereo voice. My two channels differ, so the mono mix matters." "$tmp/cleo_r.wav"
mkdir -p models/voices
sox "$tmp/aria.wav" -r 48000 -b 16 models/voices/aria.wav trim 0 10 pad 0 10 trim 0 10
sox "$tmp/basil.wav" -r 16000 -b 16 models/voices/basil.wav
sox -M "$tmp/cleo_l.wav" "$tmp/cleo_r.wav" -r 44100 -b 16 models/voices/cleo.wav

# Test fixtures: one 2.5 s sentence at every input rate upstream meets, mono and stereo.
speak en-us 50 175 "Seven quick fixtures check every rate." "$tmp/fx_l.wav"
speak en-gb 40 165 "Seven quick fixtures check every rate." "$tmp/fx_r.wav"
mkdir -p tests/fixtures/speech
for rate in 16000 22050 24000 32000 44100 48000; do
  sox "$tmp/fx_l.wav" -r "$rate" -b 16 "tests/fixtures/speech/mono_${rate}.wav" trim 0 2.5
  sox -M "$tmp/fx_l.wav" "$tmp/fx_r.wav" -r "$rate" -b 16 "tests/fixtures/speech/stereo_${rate}.wav" trim 0 2.5
done
soxi models/voices/*.wav | grep -E "^(Input File|Channels|Sample Rate|Duration)"
python models/make_demo_codes.py
