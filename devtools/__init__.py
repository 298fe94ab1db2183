"""Tools that run on the device beside the runtime (`dkit.devtools`): `doctor` (can this device run that bundle),
`bench` (runtime and server throughput), `bench_matrix` (every backend x precision), `attack_bench` (the kiosk
against hostile clients). Base-installable (no torch, no onnx); the runtime (`dkit.edge`) never imports them
(.importlinter)."""
