"""Inference (`dkit.edge.infer`): a bundle's model on a backend (onnxruntime, OpenVINO, NCNN) with the manifest's
pre- and post-processing (`model`), the runtime that picks backend and precision (`runtime`, `select`,
`device_check`), the judge (`judge`, `moderation`, `tokenizer`) and the metrics the device check shares with the
export (`agreement`, `map50`). Above `bundle` and `images`; below `stream` and `kiosk`."""
