"""The features layer: GPT-SoVITS's reference features on MLX (recipe, tables, resampler, spectrogram,
the device backend). It imports nothing from the store, the node or the tools."""
