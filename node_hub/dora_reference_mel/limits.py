"""The bounds and names every layer needs (the features, the store, the node), without pyarrow or MLX.

node/contract.py, the wire format, re-exports them: consumers read them there as before.
"""

# How a reference tensor is laid out: the STFT presets' [1, n_bins, n_frames], or the speaker model's
# [1, n_frames, n_bins] (sv), each as upstream hands it to its model.
BINS_FRAMES, FRAMES_BINS = "bins_frames", "frames_bins"
LAYOUTS = (BINS_FRAMES, FRAMES_BINS)
# MEL_DEVICE: where MLX computes (auto: a GPU when MLX has one).
DEVICES = ("auto", "gpu", "cpu")
# The element types a `mel` event may carry (MEL_DTYPE): float16 is GPT-SoVITS's half-precision path.
DTYPES = ("float32", "float16")
# Voice names become file-name prefixes: <name>_mel_v4.json must fit the 255 bytes of a file name.
MAX_VOICE_NAME_BYTES = 200
# Bounds of reference audio, checked before any sample is decoded or resampled. Below 4 kHz a clip
# holds no speech band GPT-SoVITS can use, and odd low rates cost tens of thousands of resampling
# phases (7 Hz: 32000 phases, seconds per clip); 384 kHz is the highest rate audio interfaces record.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 384_000
MAX_CHANNELS = 64
# PATH_MAX on Linux: no longer path names a file, and path resolution costs time quadratic in length.
MAX_PATH_BYTES = 4096
# Prompt text and language strings that reach `mel` metadata (voices.json, VOICE:CUSTOM): far above any
# real prompt (GPT-SoVITS wants 3 to 10 s of speech), small enough to keep every answer small.
MAX_PROMPT_TEXT_BYTES = 16 * 1024
# GPT-SoVITS's semantic codes: 25 a second of 16 kHz audio (HuBERT's 50 Hz features, halved by the
# SoVITS quantizer's stride), each a codebook index.
CODES_PER_SECOND = 25
CODE_RANGE = (0, 1023)
