"""Frames in, results out (`dkit.edge.stream`): cameras, video files, image folders (`sources`) through a runtime into
sinks (`pipeline`). Above `infer`; the kiosk is above it."""
