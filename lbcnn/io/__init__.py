"""Every file in and out of a model: ``native`` (the ``.npz`` model file format),
``artefacts`` (open any artefact: run folder, ``.npz``, ``.h5``, ``.onnx``, C folder),
``sniff`` (what a path holds, by content) and ``images`` (image files as model input)."""
