"""Faces: from a video's frames to scored-ready face crops.

``face_pass`` is the one walk every command takes (prepare, check, synth, the benchmarks):
frames decoded in small batches, faces found by a detector from ``detectors`` (MTCNN in
``mtcnn``), linked into ``tracks``, cut out by ``crop``, and measured over time by ``motion``.
Modules are imported where they are used, so importing this package stays cheap.
"""
